//! The names a certificate carries, checked before anything is signed: subjects
//! as RFC 4514 strings (parsed strictly, so that a value can never turn into
//! another attribute), DNS names as RFC 1034/5280 host names (a wildcard only
//! as the leftmost label), URIs as absolute RFC 3986 URIs, each within a bound.

use std::str::FromStr;

use der::asn1::Ia5String;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::name::Name;

use super::CertError;

/// Longest subject string accepted, in characters.
pub const MAX_SUBJECT: usize = 1024;
/// Most attributes in one subject.
pub const MAX_ATTRIBUTES: usize = 16;
/// Most subject alternative names (DNS names and URIs together).
pub const MAX_ALT_NAMES: usize = 100;
/// Longest URI accepted, in characters.
pub const MAX_URI: usize = 2048;

/// The attribute types a subject may name (RFC 4514 §3 and RFC 5280 App. A),
/// with their OIDs and the longest value RFC 5280 allows.
const ATTRIBUTES: [(&str, &str, usize); 14] = [
    ("CN", "2.5.4.3", 64),
    ("C", "2.5.4.6", 2),
    ("L", "2.5.4.7", 128),
    ("ST", "2.5.4.8", 128),
    ("STREET", "2.5.4.9", 128),
    ("O", "2.5.4.10", 64),
    ("OU", "2.5.4.11", 64),
    ("TITLE", "2.5.4.12", 64),
    ("SERIALNUMBER", "2.5.4.5", 64),
    ("GN", "2.5.4.42", 64),
    ("SN", "2.5.4.4", 64),
    ("ORGANIZATIONIDENTIFIER", "2.5.4.97", 64),
    ("DC", "0.9.2342.19200300.100.1.25", 63),
    ("UID", "0.9.2342.19200300.100.1.1", 64),
];

fn bad_subject(text: &str, why: impl std::fmt::Display) -> CertError {
    let shown: String = text.chars().take(80).flat_map(char::escape_debug).collect();
    CertError::InvalidSubject(format!("subject `{shown}` is not accepted: {why}"))
}

/// A subject such as `CN=issuer.example.org, O=Example` (RFC 4514; a space after
/// a separating comma or plus is allowed, as people write it).
///
/// # Errors
/// [`CertError::InvalidSubject`] naming the problem: an unknown attribute type,
/// a character that must be escaped, a bad escape, an empty or overlong value.
pub fn subject(text: &str) -> Result<Name, CertError> {
    if text.chars().count() > MAX_SUBJECT {
        return Err(bad_subject(
            text,
            format!("longer than {MAX_SUBJECT} characters"),
        ));
    }
    let attributes = parse(text).map_err(|why| bad_subject(text, why))?;
    if attributes.is_empty() {
        return Err(bad_subject(text, "it names no attribute"));
    }
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(bad_subject(
            text,
            format!("more than {MAX_ATTRIBUTES} attributes"),
        ));
    }
    // Every value re-escaped in full: x509-cert's parser then reads exactly the
    // attributes checked here.
    let canonical = attributes
        .iter()
        .map(|(oid, value, next)| {
            let separator = match next {
                Some(Separator::Plus) => "+",
                Some(Separator::Comma) => ",",
                None => "",
            };
            format!("{oid}={}{separator}", escape(value))
        })
        .collect::<String>();
    Name::from_str(&canonical).map_err(|e| bad_subject(text, e))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Separator {
    Comma,
    Plus,
}

/// One attribute of a subject: its OID, its value, and the separator after it.
type Attribute = (&'static str, String, Option<Separator>);

/// The attributes of `text`.
fn parse(text: &str) -> Result<Vec<Attribute>, String> {
    let mut attributes = Vec::new();
    let mut rest = text.trim_start();
    if rest.is_empty() {
        return Ok(attributes);
    }
    loop {
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("`{}` has no `=`", rest.chars().take(40).collect::<String>()))?;
        let name = &rest[..eq];
        let (oid, limit) = ATTRIBUTES
            .iter()
            .find(|(keyword, _, _)| keyword.eq_ignore_ascii_case(name))
            .map(|&(_, oid, limit)| (oid, limit))
            .ok_or_else(|| {
                let known: Vec<_> = ATTRIBUTES.iter().map(|a| a.0).collect();
                format!(
                    "unknown attribute type `{name}` (use one of {})",
                    known.join(", ")
                )
            })?;
        let (value, consumed, next) = value(&rest[eq + 1..])?;
        if value.is_empty() {
            return Err(format!("{name} has an empty value"));
        }
        if value.chars().count() > limit {
            return Err(format!("{name} is longer than {limit} characters"));
        }
        check_value(name, &value)?;
        attributes.push((oid, value, next));
        rest = &rest[eq + 1 + consumed..];
        match next {
            None => return Ok(attributes),
            Some(_) => {
                rest = rest.trim_start_matches(' ');
                if rest.is_empty() {
                    return Err("it ends with a separator".into());
                }
            }
        }
    }
}

/// One value from the start of `text`: the decoded value, the bytes consumed
/// (with the separator), and the separator that ended it.
fn value(text: &str) -> Result<(String, usize, Option<Separator>), String> {
    if text.starts_with('#') {
        return Err("hex-encoded values (`#…`) are not accepted; write the value as text".into());
    }
    let mut value = String::new();
    let mut chars = text.char_indices().peekable();
    // Where an unescaped trailing space would start.
    let mut escaped_end = 0;
    while let Some((at, c)) = chars.next() {
        match c {
            ',' | '+' => {
                let separator = if c == ',' {
                    Separator::Comma
                } else {
                    Separator::Plus
                };
                return finish(value, escaped_end).map(|v| (v, at + 1, Some(separator)));
            }
            '\\' => {
                let Some((_, e)) = chars.next() else {
                    return Err("it ends with a lone `\\`".into());
                };
                if matches!(
                    e,
                    '"' | '+' | ',' | ';' | '<' | '>' | ' ' | '#' | '=' | '\\'
                ) {
                    value.push(e);
                } else if e.is_ascii_hexdigit() {
                    let Some((_, low)) = chars.next().filter(|(_, l)| l.is_ascii_hexdigit()) else {
                        return Err(format!(
                            "`\\{e}` is not an escape (use `\\` and two hex digits)"
                        ));
                    };
                    let byte = u8::from_str_radix(&format!("{e}{low}"), 16).expect("hex digits");
                    if !byte.is_ascii() || byte.is_ascii_control() {
                        return Err(format!(
                            "`\\{e}{low}` escapes a control or non-ASCII byte; write UTF-8 characters as they are"
                        ));
                    }
                    value.push(char::from(byte));
                } else {
                    return Err(format!("`\\{e}` is not an escape"));
                }
                escaped_end = value.len();
            }
            '"' | ';' | '<' | '>' => {
                return Err(format!("`{c}` must be escaped as `\\{c}`"));
            }
            c if c.is_control() => {
                return Err(format!(
                    "it holds the control character {}",
                    c.escape_unicode()
                ));
            }
            ' ' if value.is_empty() => {
                return Err("a value starts with an unescaped space".into());
            }
            c => value.push(c),
        }
    }
    finish(value, escaped_end).map(|v| (v, text.len(), None))
}

/// Refuses unescaped trailing spaces (RFC 4514 §2.4) and returns the value.
fn finish(value: String, escaped_end: usize) -> Result<String, String> {
    if value.len() > escaped_end && value.ends_with(' ') {
        return Err("a value ends with an unescaped space".into());
    }
    Ok(value)
}

/// What a value of `name` may hold beyond RFC 4514's syntax.
fn check_value(name: &str, value: &str) -> Result<(), String> {
    let upper = name.to_ascii_uppercase();
    let printable = |c: char| c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c);
    match upper.as_str() {
        "C" if value.len() != 2 || !value.chars().all(|c| c.is_ascii_uppercase()) => Err(format!(
            "C must be two capital letters (ISO 3166), not `{value}`"
        )),
        "SERIALNUMBER" if !value.chars().all(printable) => Err(format!(
            "serialNumber holds characters a PrintableString cannot: `{value}`"
        )),
        "DC" if !value.is_ascii() => Err(format!("DC must be ASCII, not `{value}`")),
        _ => Ok(()),
    }
}

/// `value` with every character RFC 4514 lets be escaped escaped.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if matches!(
            c,
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' | '#' | '=' | ' '
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A DNS name as RFC 1034 and RFC 5280 §4.2.1.6 allow in a certificate: labels
/// of letters, digits and hyphens (not at either end), 1 to 63 characters each,
/// at most 253 in all, no trailing dot; `*` only as the whole leftmost label,
/// followed by at least two labels.
///
/// # Errors
/// [`CertError::InvalidDnsName`] saying what is wrong.
pub fn check_dns_name(name: &str) -> Result<(), CertError> {
    let bad = |why: &str| {
        let shown: String = name.chars().take(80).flat_map(char::escape_debug).collect();
        CertError::InvalidDnsName(format!("DNS name `{shown}` is not accepted: {why}"))
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > 253 {
        return Err(bad("longer than 253 characters"));
    }
    let labels: Vec<&str> = name.split('.').collect();
    for (i, label) in labels.iter().enumerate() {
        if *label == "*" && i == 0 {
            if labels.len() < 3 {
                return Err(bad("a wildcard needs at least two labels after it"));
            }
            continue;
        }
        if label.is_empty() {
            return Err(bad("it has an empty label"));
        }
        if label.len() > 63 {
            return Err(bad("a label is longer than 63 characters"));
        }
        if label.contains('*') {
            return Err(bad("`*` may only be the whole leftmost label"));
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(bad(
                "a label holds a character other than letters, digits and `-` (write IDNs as xn--)",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a label starts or ends with `-`"));
        }
    }
    Ok(())
}

/// An absolute URI as RFC 3986 §4.3 defines it: a scheme, `:`, and only the
/// characters the RFC allows (others percent-encoded); with an authority, a
/// host that parses.
///
/// # Errors
/// [`CertError::InvalidUri`] saying what is wrong.
pub fn check_uri(uri: &str) -> Result<(), CertError> {
    let bad = |why: &str| {
        let shown: String = uri.chars().take(80).flat_map(char::escape_debug).collect();
        CertError::InvalidUri(format!("URI `{shown}` is not accepted: {why}"))
    };
    if uri.len() > MAX_URI {
        return Err(bad(&format!("longer than {MAX_URI} characters")));
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Err(bad("it has no scheme (an absolute URI is `scheme:…`)"));
    };
    let mut scheme_chars = scheme.chars();
    if !scheme_chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        || !scheme_chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return Err(bad(
            "its scheme is not a letter followed by letters, digits, `+`, `-` or `.`",
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(c);
    if let Some(c) = rest.chars().find(|&c| !allowed(c)) {
        return Err(bad(&format!(
            "`{}` must be percent-encoded",
            c.escape_debug()
        )));
    }
    let bytes = rest.as_bytes();
    for (i, _) in rest.match_indices('%') {
        let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
        if !hex(i + 1) || !hex(i + 2) {
            return Err(bad("`%` is not followed by two hex digits"));
        }
    }
    if rest.contains('#') && rest[rest.find('#').expect("found") + 1..].contains('#') {
        return Err(bad("it has two `#`"));
    }
    if let Some(after) = rest.strip_prefix("//") {
        let authority = after.split(['/', '?', '#']).next().unwrap_or_default();
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if host.is_empty() && !scheme.eq_ignore_ascii_case("file") {
            return Err(bad("its authority has no host"));
        }
        url::Url::parse(uri).map_err(|e| bad(&e.to_string()))?;
    }
    Ok(())
}

/// DNS names and URIs as subject alternative names, each checked.
///
/// # Errors
/// [`CertError`] for a bad name or too many.
pub fn alt_names(dns_names: &[String], uris: &[String]) -> Result<Vec<GeneralName>, CertError> {
    if dns_names.len() + uris.len() > MAX_ALT_NAMES {
        return Err(CertError::TooLarge(format!(
            "{} subject alternative names; at most {MAX_ALT_NAMES}",
            dns_names.len() + uris.len()
        )));
    }
    let ia5 = |text: &str| Ia5String::new(text).map_err(super::encoding);
    let mut names = Vec::with_capacity(dns_names.len() + uris.len());
    for name in dns_names {
        check_dns_name(name)?;
        names.push(GeneralName::DnsName(ia5(name)?));
    }
    for uri in uris {
        check_uri(uri)?;
        names.push(GeneralName::UniformResourceIdentifier(ia5(uri)?));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributes(name: &Name) -> Vec<String> {
        name.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn subjects_as_people_write_them_parse() {
        let name = subject("CN=issuer.example.org, O=Example Wallets,C=DE").unwrap();
        assert_eq!(attributes(&name).len(), 3);
        assert_eq!(
            name,
            subject("CN=issuer.example.org,O=Example Wallets,C=DE").unwrap()
        );
        let escaped = subject(r"CN=Doe\, John+UID=jd, O=A\+B \3C\3E").unwrap();
        let all = attributes(&escaped);
        assert_eq!(all.len(), 3, "{all:?}");
        assert!(all.contains(&r"O=A\+B \<\>".to_owned()), "{all:?}");
        assert!(escaped.to_string().contains(r"CN=Doe\, John"), "{escaped}");
        assert!(subject("CN=Ünïcødé GmbH").is_ok());
        assert!(subject(r"CN=\ padded\ ").is_ok());
    }

    #[test]
    fn subjects_rfc_4514_forbids_are_refused_with_the_reason() {
        for (text, why) in [
            ("CN=\"a,O=evil\"", "must be escaped"),
            ("CN=a\0b", "control character"),
            ("CN=a\\", "lone `\\`"),
            ("CN=a\\q", "not an escape"),
            ("CN=a\\00", "control"),
            ("CN=", "empty value"),
            ("CN=a,", "ends with a separator"),
            ("CN=a;O=b", "must be escaped"),
            ("XX=a", "unknown attribute type"),
            ("CN", "no `=`"),
            ("CN=#0403616263", "hex-encoded"),
            ("CN=a ", "unescaped space"),
            ("C=Germany", "longer than 2"),
            ("C=de", "two capital letters"),
            ("", "names no attribute"),
        ] {
            match subject(text) {
                Err(CertError::InvalidSubject(message)) => {
                    assert!(message.contains(why), "{text:?}: {message}")
                }
                other => panic!("{text:?} gave {other:?}"),
            }
        }
        let long = format!("CN={}", "a".repeat(65));
        assert!(matches!(subject(&long), Err(CertError::InvalidSubject(m)) if m.contains("64")));
        let huge = format!("CN={}", "a".repeat(100_000));
        assert!(matches!(subject(&huge), Err(CertError::InvalidSubject(m)) if m.contains("1024")));
        let many = vec!["O=x"; 17].join(",");
        assert!(matches!(subject(&many), Err(CertError::InvalidSubject(m)) if m.contains("16")));
    }

    #[test]
    fn dns_names_and_uris_are_checked() {
        for good in [
            "example.org",
            "*.example.org",
            "xn--bcher-kva.example",
            "a-b.c1.d",
        ] {
            check_dns_name(good).unwrap();
        }
        for bad in [
            "",
            "a b.example",
            "evil.example, DNS:bank.example",
            "a\0.example",
            "*.org",
            "a.*.example",
            "-a.example",
            "a..example",
            "example.org.",
            &format!("{}.example", "a".repeat(64)),
        ] {
            assert!(
                matches!(check_dns_name(bad), Err(CertError::InvalidDnsName(_))),
                "{bad:?}"
            );
        }
        for good in [
            "https://issuer.example.org/path?q=1#f",
            "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
            "http://[::1]:8080/",
            "mailto:a@example.org",
        ] {
            check_uri(good).unwrap();
        }
        for bad in [
            "not a uri",
            "http://[::1",
            "://nohost",
            "http:///path",
            "https://a/b c",
            "x:%zz",
        ] {
            assert!(
                matches!(check_uri(bad), Err(CertError::InvalidUri(_))),
                "{bad:?}"
            );
        }
        let long = format!("https://example.org/{}", "a".repeat(MAX_URI));
        assert!(matches!(check_uri(&long), Err(CertError::InvalidUri(m)) if m.contains("2048")));
        let names: Vec<String> = (0..101).map(|i| format!("h{i}.example.org")).collect();
        assert!(matches!(
            alt_names(&names, &[]),
            Err(CertError::TooLarge(_))
        ));
    }
}
