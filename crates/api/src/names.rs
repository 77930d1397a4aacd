//! Syntax rules for names, label keys and values, and similar identifiers. Each check returns
//! the reasons a value is bad, in the words the API's error messages use.

/// Which rule an object's `metadata.name` follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain: most kinds.
    Subdomain,
    /// RFC 1123 label: namespaces.
    Label,
    /// RFC 1035 label: services (a name must start with a letter to be a DNS name).
    Dns1035Label,
    /// Anything usable as one URL path segment: events, leases of unusual holders.
    PathSegment,
}

const LABEL_MAX: usize = 63;
const SUBDOMAIN_MAX: usize = 253;

fn alnum_lower(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn is_label_body(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && alnum_lower(b[0])
        && alnum_lower(b[b.len() - 1])
        && b.iter().all(|&c| alnum_lower(c) || c == b'-')
}

pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > LABEL_MAX {
        errs.push(format!("must be no more than {LABEL_MAX} characters"));
    }
    if !is_label_body(s) {
        errs.push(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
             and must start and end with an alphanumeric character (regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
                .to_string(),
        );
    }
    errs
}

pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > SUBDOMAIN_MAX {
        errs.push(format!("must be no more than {SUBDOMAIN_MAX} characters"));
    }
    if !s.split('.').all(is_label_body) {
        errs.push(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character (regex used for \
             validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
                .to_string(),
        );
    }
    errs
}

pub fn dns1035_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > LABEL_MAX {
        errs.push(format!("must be no more than {LABEL_MAX} characters"));
    }
    if !(is_label_body(s) && s.as_bytes()[0].is_ascii_lowercase()) {
        errs.push(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start \
             with an alphabetic character, and end with an alphanumeric character (regex used \
             for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
                .to_string(),
        );
    }
    errs
}

/// A name must be usable as a single path segment of the resource's URL.
pub fn path_segment(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s == "." || s == ".." {
        errs.push(format!("may not be '{s}'"));
    }
    for bad in ['/', '%'] {
        if s.contains(bad) {
            errs.push(format!("may not contain '{bad}'"));
        }
    }
    errs
}

pub fn object_name(rule: NameRule, s: &str) -> Vec<String> {
    let mut errs = path_segment(s);
    if errs.is_empty() {
        errs = match rule {
            NameRule::Subdomain => dns1123_subdomain(s),
            NameRule::Label => dns1123_label(s),
            NameRule::Dns1035Label => dns1035_label(s),
            NameRule::PathSegment => Vec::new(),
        };
    }
    errs
}

/// `generateName` is a prefix: valid if the prefix plus a random alphanumeric suffix would be.
pub fn generate_name_prefix(rule: NameRule, prefix: &str) -> Vec<String> {
    let trimmed = prefix.trim_end_matches('-');
    let candidate = if trimmed.is_empty() {
        "a".to_string()
    } else {
        format!("{trimmed}a")
    };
    object_name(rule, &candidate)
}

fn qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= LABEL_MAX
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Label and annotation keys: an optional DNS subdomain prefix and `/`, then a name of at most
/// 63 characters of alphanumerics, `-`, `_` and `.`.
pub fn qualified_name(s: &str) -> Vec<String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let mut errs = Vec::new();
    if let Some(p) = prefix {
        if p.is_empty() {
            errs.push("prefix part must be non-empty".to_string());
        } else {
            errs.extend(
                dns1123_subdomain(p)
                    .into_iter()
                    .map(|e| format!("prefix part {e}")),
            );
        }
    }
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > LABEL_MAX {
        errs.push(format!(
            "name part must be no more than {LABEL_MAX} characters"
        ));
    } else if !qualified_name_part(name) {
        errs.push(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start \
             and end with an alphanumeric character (e.g. 'MyName', or 'my.name', or '123-abc')"
                .to_string(),
        );
    }
    errs
}

pub fn label_value(s: &str) -> Vec<String> {
    if s.is_empty() {
        Vec::new()
    } else if s.len() > LABEL_MAX {
        vec![format!("must be no more than {LABEL_MAX} characters")]
    } else if !qualified_name_part(s) {
        vec![
            "a valid label must be an empty string or consist of alphanumeric characters, '-', \
             '_' or '.', and must start and end with an alphanumeric character"
                .to_string(),
        ]
    } else {
        Vec::new()
    }
}

/// Port names (and other IANA service names): at most 15 characters of lowercase alphanumerics
/// and `-`, at least one letter, no leading, trailing or doubled `-`.
pub fn iana_svc_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 15 {
        errs.push("must be no more than 15 characters".to_string());
    }
    if !s.bytes().all(|c| alnum_lower(c) || c == b'-') {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if s.contains("--") {
        errs.push("must not contain consecutive hyphens".into());
    }
    if !s.bytes().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        errs.push("must not begin or end with a hyphen".into());
    }
    errs
}

/// Keys of ConfigMap and Secret data.
pub fn config_map_key(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.is_empty() || s.len() > SUBDOMAIN_MAX {
        errs.push(format!("must be between 1 and {SUBDOMAIN_MAX} characters"));
    }
    if !s
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        errs.push(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'".into(),
        );
    }
    if s == "." || s == ".." {
        errs.push(format!("must not be '{s}'"));
    }
    errs
}

/// Environment variable names: any printable ASCII except `=`, as Kubernetes allows since 1.30.
pub fn env_var_name(s: &str) -> Vec<String> {
    if !s.is_empty() && s.bytes().all(|c| (b' '..=b'~').contains(&c) && c != b'=') {
        Vec::new()
    } else {
        vec!["a valid environment variable name must consist only of printable ASCII characters other than '='".into()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns1123_label("web-1").is_empty());
        assert!(!dns1123_label("Web").is_empty());
        assert!(!dns1123_label("-web").is_empty());
        assert!(!dns1123_label(&"a".repeat(64)).is_empty());
        assert!(dns1123_subdomain("a.b-c.d").is_empty());
        assert!(!dns1123_subdomain("a..b").is_empty());
        assert!(!dns1123_subdomain("a_b").is_empty());
        assert!(dns1035_label("svc1").is_empty());
        assert!(!dns1035_label("1svc").is_empty());
        assert!(!object_name(NameRule::PathSegment, "a/b").is_empty());
        assert!(object_name(NameRule::PathSegment, "Web.1:x").is_empty());
        assert!(generate_name_prefix(NameRule::Subdomain, "web-").is_empty());
        assert!(!generate_name_prefix(NameRule::Subdomain, "Web-").is_empty());
    }

    #[test]
    fn labels() {
        assert!(qualified_name("app").is_empty());
        assert!(qualified_name("app.kubernetes.io/name").is_empty());
        assert!(qualified_name("A_b.C").is_empty());
        assert!(!qualified_name("/x").is_empty());
        assert!(!qualified_name("a/").is_empty());
        assert!(!qualified_name("Bad_Prefix/x").is_empty());
        assert!(!qualified_name("-x").is_empty());
        assert!(label_value("").is_empty());
        assert!(label_value("v1.2_3-A").is_empty());
        assert!(!label_value("has space").is_empty());
        assert!(!label_value(&"a".repeat(64)).is_empty());
    }

    #[test]
    fn other_identifiers() {
        assert!(iana_svc_name("http").is_empty());
        assert!(!iana_svc_name("http--x").is_empty());
        assert!(!iana_svc_name("8080").is_empty());
        assert!(!iana_svc_name("averyveryverylongname").is_empty());
        assert!(config_map_key("app.properties").is_empty());
        assert!(!config_map_key("a/b").is_empty());
        assert!(env_var_name("MY_VAR.1").is_empty());
        assert!(!env_var_name("A=B").is_empty());
    }
}
