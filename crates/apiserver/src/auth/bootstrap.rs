//! Bootstrap tokens: `<id>.<secret>` (6 and 16 lower-case letters or digits), each a Secret
//! `kube-system/bootstrap-token-<id>` of type `bootstrap.kubernetes.io/token`, as Kubernetes
//! keeps them. A joining node presents one to ask for its own certificate; it authenticates
//! as `system:bootstrap:<id>` in `system:bootstrappers` (and the token's extra groups) until
//! it expires or its Secret goes.

use std::collections::BTreeMap;

use api::rbac::UserInfo;
use base64::Engine;
use serde::Deserialize;

/// The Secret type of a bootstrap token.
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// Every bootstrap token's user is in this group.
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";

/// The id and secret of a token in the bootstrap form.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

/// The Secret's name for token `id`.
pub fn secret_name(id: &str) -> String {
    format!("bootstrap-token-{id}")
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SecretView {
    #[serde(rename = "type")]
    type_: String,
    data: BTreeMap<String, String>,
    metadata: Meta,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Meta {
    deletion_timestamp: Option<String>,
}

/// Whether an extra group is one a bootstrap token may name.
fn valid_group(g: &str) -> bool {
    let Some(rest) = g.strip_prefix("system:bootstrappers:") else {
        return false;
    };
    !rest.is_empty()
        && rest.len() <= 256
        && rest
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b':' || b == b'-')
        && rest
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The user `token` authenticates as, given its Secret's stored JSON (`secret`), at `now`
/// (unix seconds); `None` when the Secret does not vouch for it.
pub fn user_of(token: &str, secret: &[u8], now: i64) -> Option<UserInfo> {
    let (id, given) = parse(token)?;
    let s: SecretView = serde_json::from_slice(secret).ok()?;
    if s.type_ != SECRET_TYPE || s.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let field = |k: &str| -> Option<String> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(s.data.get(k)?)
            .ok()?;
        String::from_utf8(raw).ok()
    };
    let stored = field("token-secret")?;
    if !super::constant_time_eq(stored.as_bytes(), given.as_bytes()) || field("token-id")? != id {
        return None;
    }
    if let Some(exp) = field("expiration") {
        match exp.parse::<jiff::Timestamp>() {
            Ok(t) if t.as_second() > now => {}
            _ => return None,
        }
    }
    if field("usage-bootstrap-authentication").as_deref() != Some("true") {
        return None;
    }
    let mut groups = vec![BOOTSTRAPPERS.to_string()];
    for g in field("auth-extra-groups")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
    {
        if !valid_group(g) {
            return None;
        }
        groups.push(g.to_string());
    }
    groups.sort();
    groups.dedup();
    Some(UserInfo {
        name: format!("system:bootstrap:{id}"),
        groups,
        ..UserInfo::default()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    fn secret(fields: &[(&str, &str)]) -> Vec<u8> {
        let data: serde_json::Map<String, serde_json::Value> = fields
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    json!(base64::engine::general_purpose::STANDARD.encode(v)),
                )
            })
            .collect();
        json!({"type": SECRET_TYPE, "metadata": {"name": "bootstrap-token-abcdef"}, "data": data})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn tokens_authenticate_while_their_secret_vouches_for_them() {
        let good = [
            ("token-id", "abcdef"),
            ("token-secret", "0123456789abcdef"),
            ("usage-bootstrap-authentication", "true"),
            ("expiration", "2030-01-01T00:00:00Z"),
            ("auth-extra-groups", "system:bootstrappers:berth:nodes"),
        ];
        let now = 1_800_000_000;
        let u = user_of("abcdef.0123456789abcdef", &secret(&good), now).unwrap();
        assert_eq!(u.name, "system:bootstrap:abcdef");
        assert_eq!(
            u.groups,
            ["system:bootstrappers", "system:bootstrappers:berth:nodes"]
        );
        // A wrong secret, an expired token, one not for authentication: nobody.
        assert!(user_of("abcdef.0123456789abcdee", &secret(&good), now).is_none());
        assert!(user_of("abcdef.0123456789abcdef", &secret(&good), 1_900_000_000).is_none());
        let mut unusable = good.to_vec();
        unusable.retain(|(k, _)| *k != "usage-bootstrap-authentication");
        assert!(user_of("abcdef.0123456789abcdef", &secret(&unusable), now).is_none());
        let mut bad_group = good.to_vec();
        bad_group[4] = ("auth-extra-groups", "system:masters");
        assert!(user_of("abcdef.0123456789abcdef", &secret(&bad_group), now).is_none());
        assert!(parse("ABCDEF.0123456789abcdef").is_none());
        assert!(parse("abcdef.0123456789abcde").is_none());
    }
}
