//! The string `format`s a custom resource's schema may name, checked as Kubernetes checks
//! them. Formats it does not know are accepted without a check, as Kubernetes does.

use base64::Engine;

/// Whether `s` is of format `f`.
pub fn valid(f: &str, s: &str) -> bool {
    match f {
        "byte" => base64::engine::general_purpose::STANDARD.decode(s).is_ok(),
        "date" => jiff::civil::Date::strptime("%Y-%m-%d", s).is_ok(),
        "date-time" | "datetime" => s.parse::<jiff::Timestamp>().is_ok(),
        "duration" => go_duration(s),
        "uuid" => uuid(s, None),
        "uuid3" => uuid(s, Some('3')),
        "uuid4" => uuid(s, Some('4')),
        "uuid5" => uuid(s, Some('5')),
        "email" => email(s),
        "hostname" => hostname(s),
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => s.parse::<crate::cidr::Cidr>().is_ok(),
        "mac" => mac(s),
        "uri" => s.contains(':') && !s.contains(char::is_whitespace),
        "hexcolor" => {
            s.len() == 7 && s.starts_with('#') && s[1..].chars().all(|c| c.is_ascii_hexdigit())
        }
        "rgbcolor" => s.starts_with("rgb(") && s.ends_with(')'),
        _ => true,
    }
}

fn uuid(s: &str, version: Option<char>) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let shape = parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()));
    shape && version.is_none_or(|v| parts[2].starts_with(v))
}

fn email(s: &str) -> bool {
    match s.rsplit_once('@') {
        Some((local, domain)) => !local.is_empty() && domain.contains('.') && hostname(domain),
        None => false,
    }
}

fn hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.trim_end_matches('.').split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn mac(s: &str) -> bool {
    let sep = if s.contains(':') { ':' } else { '-' };
    let parts: Vec<&str> = s.split(sep).collect();
    matches!(parts.len(), 6 | 8 | 20)
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Go's `time.ParseDuration` syntax: `1h30m`, `-1.5s`, `300ms`.
fn go_duration(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    if s == "0" {
        return true;
    }
    if s.is_empty() {
        return false;
    }
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ns", "us", "µs", "μs", "ms", "s", "m", "h"]
            .iter()
            .find(|u| rest.starts_with(**u));
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::valid;

    #[test]
    fn formats() {
        for (f, good, bad) in [
            ("date", "2026-12-07", "2026-13-01"),
            ("date-time", "2026-12-07T10:00:00Z", "yesterday"),
            ("duration", "1h30m", "1 hour"),
            ("uuid", "123e4567-e89b-12d3-a456-426614174000", "123"),
            ("email", "a@example.com", "a@"),
            ("hostname", "web-1.example.com", "-web"),
            ("ipv4", "10.0.0.1", "10.0.0.256"),
            ("ipv6", "fd00::1", "fd00:::1"),
            ("cidr", "10.0.0.0/8", "10.0.0.0/33"),
            ("mac", "aa:bb:cc:dd:ee:ff", "aa:bb"),
            ("byte", "aGVsbG8=", "not base64!"),
        ] {
            assert!(valid(f, good), "{f} {good}");
            assert!(!valid(f, bad), "{f} {bad}");
        }
        assert!(valid("something-new", "anything"));
    }
}
