//! Container environment: Kubernetes' `$(VAR)` expansion in env values, command and args.

use std::collections::BTreeMap;

/// Expands `$(NAME)` with `vars`; `$$` is a literal `$`; an undefined `$(NAME)` stays as written
/// (the Kubernetes rules for env values, command and args).
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'('
                && let Some(end) = s[i + 2..].find(')')
            {
                let name = &s[i + 2..i + 2 + end];
                match vars.get(name) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&s[i..i + 3 + end]),
                }
                i += 3 + end;
                continue;
            }
        }
        let ch = s[i..].chars().next().unwrap_or_default();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_defined_variables_and_keeps_the_rest() {
        let vars: BTreeMap<String, String> =
            [("POD_IP".to_string(), "127.1.0.2".to_string())].into();
        assert_eq!(expand("--bind $(POD_IP)", &vars), "--bind 127.1.0.2");
        assert_eq!(expand("$(MISSING) x", &vars), "$(MISSING) x");
        assert_eq!(expand("$$(POD_IP)", &vars), "$(POD_IP)");
        assert_eq!(expand("cost $5 é $(POD_IP", &vars), "cost $5 é $(POD_IP");
    }
}
