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
            {"id": "z", "type": "azure-kv"}
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
