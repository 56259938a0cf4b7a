//! `${VAR}` and `${VAR:default}` placeholders, expanded inside JSON string values
//! after parsing, so a variable's value can never change the JSON structure.

use serde_json::Value;

/// A placeholder that could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaceholderProblem {
    /// `${NAME}` without a default, and `NAME` is not set.
    Unset { path: String, var: String },
    /// A `${` without its closing `}` or with an invalid name.
    Malformed { path: String, detail: String },
}

/// Expands every placeholder in every string of `value`, reading variables through
/// `lookup`; returns every problem found, each with its JSON path.
pub fn expand(
    value: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<PlaceholderProblem>,
) {
    match value {
        Value::String(text) => {
            if text.contains("${")
                && let Some(expanded) = expand_str(text, path, lookup, problems)
            {
                *text = expanded;
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand(item, &format!("{path}[{i}]"), lookup, problems);
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                expand(item, &child, lookup, problems);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn expand_str(
    text: &str,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<PlaceholderProblem>,
) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut complete = true;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            problems.push(PlaceholderProblem::Malformed {
                path: path.to_owned(),
                detail: "`${` without a closing `}`".into(),
            });
            return None;
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(':') {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        if !is_var_name(name) {
            problems.push(PlaceholderProblem::Malformed {
                path: path.to_owned(),
                detail: format!("`${{{inner}}}` does not start with a variable name"),
            });
            return None;
        }
        match (lookup(name), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                problems.push(PlaceholderProblem::Unset {
                    path: path.to_owned(),
                    var: name.to_owned(),
                });
                complete = false;
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    complete.then_some(out)
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(mut value: Value) -> (Value, Vec<PlaceholderProblem>) {
        let lookup = |name: &str| match name {
            "HOST" => Some("vault.local".to_owned()),
            "EVIL" => Some("\", \"x\": 1".to_owned()),
            _ => None,
        };
        let mut problems = Vec::new();
        expand(&mut value, "", &lookup, &mut problems);
        (value, problems)
    }

    #[test]
    fn expands_set_variables_and_defaults() {
        let (value, problems) =
            run(json!({"a": "http://${HOST}:${PORT:8200}/v1", "n": 3, "l": ["${HOST}"]}));
        assert!(problems.is_empty());
        assert_eq!(
            value,
            json!({"a": "http://vault.local:8200/v1", "n": 3, "l": ["vault.local"]})
        );
    }

    #[test]
    fn values_cannot_inject_json() {
        let (value, _) = run(json!({"a": "${EVIL}"}));
        assert_eq!(value, json!({"a": "\", \"x\": 1"}));
    }

    #[test]
    fn reports_every_unset_variable_with_its_path() {
        let (_, problems) = run(json!({"p": [{"t": "${ONE}"}, {"t": "${TWO}-${THREE}"}]}));
        let vars: Vec<_> = problems
            .iter()
            .map(|p| match p {
                PlaceholderProblem::Unset { path, var } => format!("{path}:{var}"),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(vars, ["p[0].t:ONE", "p[1].t:TWO", "p[1].t:THREE"]);
    }

    #[test]
    fn malformed_placeholders_are_errors() {
        let (_, problems) = run(json!({"a": "${HOST"}));
        assert!(matches!(problems[0], PlaceholderProblem::Malformed { .. }));
        let (_, problems) = run(json!({"a": "${1X}"}));
        assert!(matches!(problems[0], PlaceholderProblem::Malformed { .. }));
    }
}
