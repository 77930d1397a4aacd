//! Finding and cutting parts of an API object's JSON text without decoding it: where its
//! `metadata` begins (the watch cache puts the `resourceVersion` there), and the text without
//! `metadata.managedFields` (for callers that never read them, as client-go's informers can:
//! the field tree is most of a typical object's size and of the time spent decoding it).

use std::ops::Range;

fn ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// `i` at an opening quote; the index past the closing one.
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    i += 1;
    while *b.get(i)? != b'"' {
        i += if b[i] == b'\\' { 2 } else { 1 };
    }
    Some(i + 1)
}

/// `i` at the start of a value; the index past it.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match *b.get(j)? {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while b
                .get(j)
                .is_some_and(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace())
            {
                j += 1;
            }
            Some(j)
        }
    }
}

/// The object member whose key starts at `i`: its key and where its value starts.
fn member(b: &[u8], i: usize) -> Option<(&[u8], usize)> {
    let key_end = string_end(b, i)?;
    let colon = ws(b, key_end);
    if b.get(colon) != Some(&b':') {
        return None;
    }
    Some((&b[i + 1..key_end - 1], ws(b, colon + 1)))
}

/// Where the members of the top-level `metadata` object begin (just past its `{`), if it has
/// one.
pub fn metadata_start(json: &[u8]) -> Option<usize> {
    let mut j = ws(json, 0);
    if json.get(j) != Some(&b'{') {
        return None;
    }
    j = ws(json, j + 1);
    loop {
        let (key, v) = member(json, j)?;
        if key == b"metadata" {
            return (json.get(v) == Some(&b'{')).then_some(v + 1);
        }
        j = ws(json, value_end(json, v)?);
        if json.get(j) != Some(&b',') {
            return None;
        }
        j = ws(json, j + 1);
    }
}

/// The members of the object whose text is `obj`, in order: each key (as written, escapes and
/// all) and the range of its value's text. `None` if `obj` is not one object.
pub fn members(obj: &[u8]) -> Option<Vec<(&[u8], Range<usize>)>> {
    let mut j = ws(obj, 0);
    if obj.get(j) != Some(&b'{') {
        return None;
    }
    let mut out = Vec::new();
    j = ws(obj, j + 1);
    if obj.get(j) == Some(&b'}') {
        return (ws(obj, j + 1) == obj.len()).then_some(out);
    }
    loop {
        let (key, v) = member(obj, j)?;
        let end = value_end(obj, v)?;
        out.push((key, v..end));
        let next = ws(obj, end);
        match obj.get(next)? {
            b',' => j = ws(obj, next + 1),
            b'}' => return (ws(obj, next + 1) == obj.len()).then_some(out),
            _ => return None,
        }
    }
}

/// Where `resourceVersion` goes in the top-level `metadata` to keep ObjectMeta's order (after
/// name, generateName, namespace, selfLink and uid): the index, and whether a comma is needed
/// before and after it. `None` if there is no `metadata` object.
pub fn resource_version_slot(json: &[u8]) -> Option<(usize, bool, bool)> {
    const BEFORE: [&[u8]; 5] = [b"name", b"generateName", b"namespace", b"selfLink", b"uid"];
    let mut j = ws(json, metadata_start(json)?);
    if json.get(j) == Some(&b'}') {
        return Some((j, false, false));
    }
    loop {
        let (key, v) = member(json, j)?;
        if !BEFORE.contains(&key) {
            return Some((j, false, true));
        }
        let end = value_end(json, v)?;
        let next = ws(json, end);
        match json.get(next)? {
            b',' => j = ws(json, next + 1),
            b'}' => return Some((end, true, false)),
            _ => return None,
        }
    }
}

/// Walk the object at `i`: an API object (its `metadata` loses `managedFields`), a watch
/// event (its `object` is one) or a list (each of its `items` is one). `in_meta` when the
/// object is a `metadata`. Returns the index past it.
fn object(b: &[u8], i: usize, in_meta: bool, cuts: &mut Vec<Range<usize>>) -> Option<usize> {
    let mut j = ws(b, i + 1);
    if *b.get(j)? == b'}' {
        return Some(j + 1);
    }
    // Where the separator before the current member is, if it has one.
    let mut comma: Option<usize> = None;
    loop {
        let key_start = j;
        let (key, v) = member(b, j)?;
        let end = match (in_meta, key, b.get(v)) {
            (true, b"managedFields", _) => {
                let end = value_end(b, v)?;
                cuts.push(match comma {
                    Some(c) => c..end,
                    None => {
                        // The first member: take the comma after it instead, if any.
                        let after = ws(b, end);
                        if b.get(after) == Some(&b',') {
                            key_start..ws(b, after + 1)
                        } else {
                            key_start..end
                        }
                    }
                });
                end
            }
            (false, b"metadata", Some(b'{')) => object(b, v, true, cuts)?,
            (false, b"object", Some(b'{')) => object(b, v, false, cuts)?,
            (false, b"items", Some(b'[')) => {
                let mut k = ws(b, v + 1);
                if b.get(k) == Some(&b']') {
                    k + 1
                } else {
                    loop {
                        k = match b.get(k)? {
                            b'{' => object(b, k, false, cuts)?,
                            _ => value_end(b, k)?,
                        };
                        k = ws(b, k);
                        match b.get(k)? {
                            b',' => k = ws(b, k + 1),
                            b']' => break k + 1,
                            _ => return None,
                        }
                    }
                }
            }
            _ => value_end(b, v)?,
        };
        j = ws(b, end);
        match b.get(j)? {
            b',' => {
                comma = Some(j);
                j = ws(b, j + 1);
            }
            b'}' => return Some(j + 1),
            _ => return None,
        }
    }
}

/// `json` without any `metadata.managedFields` of the object, watch event or list it holds;
/// `None` when there are none (or the text is not a JSON object: the decoder will say so).
pub fn strip_managed_fields(json: &[u8]) -> Option<Vec<u8>> {
    let start = ws(json, 0);
    if json.get(start) != Some(&b'{') {
        return None;
    }
    let mut cuts = Vec::new();
    object(json, start, false, &mut cuts)?;
    if cuts.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(json.len());
    let mut at = 0;
    for c in cuts {
        out.extend_from_slice(&json[at..c.start]);
        at = c.end;
    }
    out.extend_from_slice(&json[at..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::{Value, json};

    use super::*;

    fn strip(v: &Value) -> Value {
        let text = v.to_string();
        match strip_managed_fields(text.as_bytes()) {
            Some(b) => serde_json::from_slice(&b).unwrap(),
            None => v.clone(),
        }
    }

    #[test]
    fn managed_fields_go_and_nothing_else_does() {
        let mf = json!([{"manager": "m", "fieldsV1": {"f:metadata": {"f:managedFields": {}}},
                         "note": "}\"],{"}]);
        let cases = [
            // Alone, first, middle, last.
            (
                json!({"metadata": {"managedFields": mf}}),
                json!({"metadata": {}}),
            ),
            (
                json!({"kind": "Pod", "metadata": {"managedFields": mf, "name": "a", "uid": "u"}, "spec": {}}),
                json!({"kind": "Pod", "metadata": {"name": "a", "uid": "u"}, "spec": {}}),
            ),
            (
                json!({"metadata": {"a": 1, "managedFields": mf, "name": "x"}}),
                json!({"metadata": {"a": 1, "name": "x"}}),
            ),
            // A watch event and a list.
            (
                json!({"type": "MODIFIED", "object": {"metadata": {"name": "a", "managedFields": mf}}}),
                json!({"type": "MODIFIED", "object": {"metadata": {"name": "a"}}}),
            ),
            (
                json!({"metadata": {"resourceVersion": "3"}, "items": [
                    {"metadata": {"managedFields": mf, "name": "a"}}, 7,
                    {"metadata": {"name": "b", "managedFields": mf}}]}),
                json!({"metadata": {"resourceVersion": "3"}, "items": [
                    {"metadata": {"name": "a"}}, 7, {"metadata": {"name": "b"}}]}),
            ),
            // Elsewhere it is data: annotations, labels, a spec's own "metadata".
            (
                json!({"metadata": {"annotations": {"managedFields": "keep"}},
                       "spec": {"metadata": {"managedFields": "keep"}},
                       "data": {"managedFields": "keep"}}),
                json!({"metadata": {"annotations": {"managedFields": "keep"}},
                       "spec": {"metadata": {"managedFields": "keep"}},
                       "data": {"managedFields": "keep"}}),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(strip(&input), want, "{input}");
        }
        // Spacing as a person might write it.
        let spaced = b"{ \"metadata\" : { \"managedFields\" : [ 1 , 2 ] , \"name\" : \"a\" } }";
        let got: Value = serde_json::from_slice(&strip_managed_fields(spaced).unwrap()).unwrap();
        assert_eq!(got, json!({"metadata": {"name": "a"}}));
        assert!(strip_managed_fields(b"[1]").is_none());
        assert!(
            strip_managed_fields(b"{\"kind\": \"Pod\"}").is_none(),
            "nothing to cut"
        );
        assert!(strip_managed_fields(b"{\"metadata\": {\"managedFields\": [").is_none());
    }

    #[test]
    fn the_top_level_metadata_is_found() {
        let cases: [(&str, Option<&str>); 6] = [
            (
                r#"{"kind":"Pod","metadata":{"name":"a"}}"#,
                Some(r#""name":"a"}}"#),
            ),
            ("{ \"metadata\" :\n { } }", Some(" } }")),
            // Nested objects named metadata, keys and values that say it, quotes in keys.
            (
                r#"{"data":{"metadata":{}},"kind":"metadata","k\"metadata":[{"metadata":{}}],"metadata":{"x":1}}"#,
                Some(r#""x":1}}"#),
            ),
            (r#"{"kind":"x"}"#, None),
            (r#"{"metadata":null}"#, None),
            ("[]", None),
        ];
        for (json, rest) in cases {
            let at = metadata_start(json.as_bytes());
            assert_eq!(at.map(|i| &json[i..]), rest, "{json}");
        }
    }
}
