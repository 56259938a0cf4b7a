use super::*;
use serde_json::json;

fn no_env(_: &str) -> Option<String> {
    None
}

fn problems_of(value: serde_json::Value) -> Vec<Problem> {
    match Config::parse(&value.to_string(), "kms.json", &no_env) {
        Ok(_) => panic!("expected {value} to be rejected"),
        Err(ConfigError::Invalid { problems, .. }) => problems,
        Err(other) => panic!("unexpected error {other}"),
    }
}

fn one_provider(entry: serde_json::Value) -> serde_json::Value {
    json!({"defaultProvider": "db", "providers": [{"id": "db", "type": "db"}, entry]})
}

#[test]
fn no_providers_means_one_db_provider() {
    let config = Config::parse("{}", "kms.json", &no_env).unwrap();
    assert_eq!(config.default_provider, "db");
    assert_eq!(config.providers.len(), 1);
    assert!(matches!(config.providers[0].config, ProviderConfig::Db(_)));
}

#[test]
fn every_provider_type_parses() {
    let text = json!({
        "defaultProvider": "db",
        "providers": [
            {"id": "db", "type": "db", "description": "d"},
            {"id": "v", "type": "vault", "vaultUrl": "http://127.0.0.1:8200", "vaultToken": "t"},
            {"id": "a", "type": "aws-kms", "region": "eu-central-1", "endpoint": "http://127.0.0.1:5000"},
            {"id": "p", "type": "pkcs11", "library": "/usr/lib/softhsm/libsofthsm2.so", "slot": "tok", "pin": "1234"},
            {"id": "p2", "type": "pkcs11", "library": "/x.so", "slot": 0, "pin": "1234", "readOnly": true},
            {"id": "h", "type": "http", "baseUrl": "http://127.0.0.1:3001", "apiKey": "k"},
            {"id": "h2", "type": "http", "baseUrl": "https://kms", "auth": {"type": "oauth2-client-credentials", "tokenUrl": "https://idp/token", "clientId": "c", "clientSecret": "s"}},
            {"id": "h3", "type": "http", "baseUrl": "https://kms", "auth": {"type": "mtls", "certFile": "c.pem", "keyFile": "k.pem"}},
            {"id": "h4", "type": "http", "baseUrl": "https://kms", "auth": {"type": "none"}},
            {"id": "w", "type": "wasm", "component": "g.wasm", "config": {"a": 1}, "allowedHosts": ["kms.example.com:443"], "limits": {"memoryMb": 64, "timeoutMs": 2000, "instances": 4}}
        ]
    });
    let config = Config::parse(&text.to_string(), "kms.json", &no_env).unwrap();
    let kinds: Vec<_> = config
        .providers
        .iter()
        .map(|p| p.config.kind().as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "db", "vault", "aws-kms", "pkcs11", "pkcs11", "http", "http", "http", "http", "wasm"
        ]
    );
    assert!(matches!(
        &config.providers[3].config,
        ProviderConfig::Pkcs11(Pkcs11Config { slot: Pkcs11Slot::Label(l), .. }) if l == "tok"
    ));
}

#[test]
fn a_typo_is_rejected_in_every_provider_type() {
    let entries = [
        json!({"id": "x", "type": "db", "vaultUrl": "http://a"}),
        json!({"id": "x", "type": "vault", "vaultUrl": "http://a", "vaultToken": "t", "mout": "m"}),
        json!({"id": "x", "type": "aws-kms", "region": "r", "regoin": "r"}),
        json!({"id": "x", "type": "pkcs11", "library": "/l", "slot": 0, "pin": "1", "readonly": true}),
        json!({"id": "x", "type": "http", "baseUrl": "http://a", "keyPath": "/k"}),
        json!({"id": "x", "type": "http", "baseUrl": "http://a", "auth": {"type": "none", "token": "t"}}),
        json!({"id": "x", "type": "http", "baseUrl": "http://a", "auth": {"type": "bearer", "tokn": "t"}}),
        json!({"id": "x", "type": "http", "baseUrl": "http://a", "auth": {"type": "mtls", "certFile": "c", "keyFile": "k", "caFiles": "x"}}),
        json!({"id": "x", "type": "http", "baseUrl": "http://a", "auth": {"type": "oauth2-client-credentials", "tokenUrl": "http://t", "clientId": "c", "clientSecret": "s", "scopes": "x"}}),
        json!({"id": "x", "type": "wasm", "component": "g.wasm", "allowedHost": []}),
        json!({"id": "x", "type": "wasm", "component": "g.wasm", "limits": {"memMb": 1}}),
    ];
    for entry in entries {
        let problems = problems_of(one_provider(entry.clone()));
        assert!(
            problems
                .iter()
                .any(|p| p.path.starts_with("providers[1]") && p.message.contains("unknown field")),
            "{entry}: {problems:?}"
        );
    }
}

#[test]
fn unknown_type_duplicate_ids_and_missing_default_are_all_reported_at_once() {
    let problems = problems_of(json!({
        "defaultProvider": "nope",
        "providers": [
            {"id": "db", "type": "db"},
            {"id": "db", "type": "db"},
            {"id": "z", "type": "luna-hsm"}
        ],
        "extra": 1
    }));
    let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
    assert!(paths.contains(&"providers[1].id"), "{problems:?}");
    assert!(paths.contains(&"providers[2].type"), "{problems:?}");
    assert!(paths.contains(&"defaultProvider"), "{problems:?}");
    assert!(paths.contains(&"extra"), "{problems:?}");
}

#[test]
fn wrong_types_name_their_path() {
    let problems = problems_of(one_provider(
        json!({"id": "v", "type": "vault", "vaultUrl": 5, "vaultToken": "t"}),
    ));
    assert_eq!(problems[0].path, "providers[1].vaultUrl", "{problems:?}");
}

#[test]
fn unset_variables_are_listed_by_name() {
    let problems = problems_of(one_provider(
        json!({"id": "v", "type": "vault", "vaultUrl": "${VAULT_URL}", "vaultToken": "${VAULT_TOKEN}"}),
    ));
    let text: Vec<_> = problems.iter().map(ToString::to_string).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("VAULT_URL") && t.contains("providers[1].vaultUrl")),
        "{text:?}"
    );
    assert!(text.iter().any(|t| t.contains("VAULT_TOKEN")), "{text:?}");
}

#[test]
fn secrets_do_not_show_in_debug_output() {
    let text = one_provider(
        json!({"id": "v", "type": "vault", "vaultUrl": "http://a", "vaultToken": "hunter2-secret"}),
    );
    let config = Config::parse(&text.to_string(), "kms.json", &no_env).unwrap();
    assert!(!format!("{config:?}").contains("hunter2-secret"));
}

#[test]
fn a_named_guest_entry_runs_its_adapter_with_its_own_fields_as_config() {
    let lookup =
        |name: &str| (name == "KMSGW_ADAPTER_DIR").then(|| "/opt/kmsgw/adapters".to_owned());
    let text = json!({
        "defaultProvider": "azure",
        "adapters": {"acme-kms": {"component": "acme.wasm", "sha256": "ab"}},
        "providers": [
            {"id": "azure", "type": "azure-kv", "description": "Azure Key Vault",
             "vaultUrl": "https://v.vault.azure.net", "tenantId": "t", "clientId": "c",
             "allowedHosts": ["login.example.com"], "limits": {"timeoutMs": 9000},
             "egressAuth": [{"host": "v.vault.azure.net", "type": "oauth2-client-credentials",
                "tokenUrl": "https://login.example.com/t/oauth2/v2.0/token", "clientId": "c", "clientSecret": "s"}]},
            {"id": "acme", "type": "acme-kms", "endpoint": "https://kms.acme.example"},
        ]
    })
    .to_string();
    let config = Config::parse(&text, "kms.json", &lookup).unwrap();
    let ProviderConfig::Wasm(azure) = &config.providers[0].config else {
        panic!("a named guest is a wasm provider");
    };
    assert_eq!(azure.adapter.as_deref(), Some("azure-kv"));
    assert_eq!(
        azure.component,
        ComponentSource::File(PathBuf::from("/opt/kmsgw/adapters/azure_kv.wasm"))
    );
    assert_eq!(
        azure.config,
        Some(json!({"vaultUrl": "https://v.vault.azure.net", "tenantId": "t", "clientId": "c"}))
    );
    assert_eq!(azure.allowed_hosts, ["login.example.com"]);
    assert_eq!(azure.limits.as_ref().unwrap().timeout_ms, Some(9000));
    assert_eq!(azure.egress_auth.len(), 1);
    assert!(matches!(
        azure.egress_auth[0].kind,
        EgressAuthKind::Oauth2ClientCredentials(_)
    ));
    let ProviderConfig::Wasm(acme) = &config.providers[1].config else {
        panic!("a named guest is a wasm provider");
    };
    assert_eq!(
        acme.component,
        ComponentSource::File(PathBuf::from("acme.wasm"))
    );
    assert_eq!(acme.sha256.as_deref(), Some("ab"));
}

#[test]
fn a_shipped_guest_comes_from_the_binary_unless_the_adapter_dir_is_set() {
    let text = one_provider(json!({"id": "g", "type": "gcp-kms", "projectId": "p",
        "location": "l", "keyRing": "r"}))
    .to_string();
    let config = Config::parse(&text, "kms.json", &no_env).unwrap();
    let ProviderConfig::Wasm(gcp) = &config.providers[1].config else {
        panic!("a named guest is a wasm provider");
    };
    let ComponentSource::Shipped(shipped) = &gcp.component else {
        panic!("expected the embedded component, got {}", gcp.component);
    };
    assert_eq!(shipped.file, "gcp_kms.wasm");
    let bytes = gcp.component.bytes().unwrap();
    assert_eq!(&bytes[..8], b"\0asm\x0d\0\x01\0", "a component's preamble");
}

#[test]
fn egress_auth_items_are_strict() {
    let problems = problems_of(one_provider(json!({
        "id": "g", "type": "wasm", "component": "g.wasm",
        "egressAuth": [
            {"host": "a.example", "type": "bearer", "token": "t", "tokne": "typo"},
            {"type": "bearer", "token": "t"},
        ]
    })));
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(
        text.iter()
            .any(|p| p.starts_with("providers[1].egressAuth[0]") && p.contains("tokne")),
        "{text:?}"
    );
}

/// Every provider kind is in `ProviderKind::ALL` and parses from its own name: a
/// new kind added to the enum fails this match until it is given an index, and
/// this test until it is listed.
#[test]
fn every_provider_kind_is_listed_and_named_once() {
    fn index(kind: ProviderKind) -> usize {
        match kind {
            ProviderKind::Db => 0,
            ProviderKind::Vault => 1,
            ProviderKind::AwsKms => 2,
            ProviderKind::Pkcs11 => 3,
            ProviderKind::Http => 4,
            ProviderKind::Wasm => 5,
        }
    }
    for (i, kind) in ProviderKind::ALL.into_iter().enumerate() {
        assert_eq!(index(kind), i);
        assert_eq!(ProviderKind::parse(kind.as_str()), Some(kind));
        assert_eq!(
            serde_json::to_value(kind).unwrap(),
            serde_json::json!(kind.as_str())
        );
    }
    assert_eq!(ProviderKind::parse("aws_kms"), None);
}

#[test]
fn a_sad_lifetime_outside_one_second_to_one_hour_is_refused() {
    for lifetime in ["0s", "999ms", "61m", "soon"] {
        let problems = problems_of(json!({"csc": {"sadLifetime": lifetime}}));
        assert_eq!(
            problems[0].path, "csc.sadLifetime",
            "{lifetime}: {problems:?}"
        );
    }
    let problems = problems_of(json!({"csc": {"sadLife": "2m"}}));
    assert_eq!(problems[0].path, "csc.sadLife", "{problems:?}");
    for (lifetime, seconds) in [("1s", 1), ("1h", 3600)] {
        let text = json!({"csc": {"sadLifetime": lifetime}}).to_string();
        let config = Config::parse(&text, "kms.json", &no_env).unwrap();
        assert_eq!(config.csc.sad_lifetime().unwrap().as_secs(), seconds);
    }
    assert_eq!(CscConfig::default().sad_lifetime().unwrap().as_secs(), 120);
}
