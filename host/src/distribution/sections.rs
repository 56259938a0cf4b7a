//! The top-level custom sections of a component (or core module): where a
//! publisher's signature and the guest's requested capabilities travel.

use std::ops::Range;

use wasm_encoder::Encode;

/// One top-level custom section.
#[derive(Debug)]
pub struct Custom<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
    /// The whole section's bytes (id, size, name and data) in the binary.
    pub range: Range<usize>,
}

/// The top-level custom sections of `bytes`, in order, and whether the last
/// section of the binary is the last of them.
///
/// # Errors
/// When `bytes` is not a WebAssembly binary whose sections can be walked.
pub fn custom_sections(bytes: &[u8]) -> Result<Vec<Custom<'_>>, String> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err("not a WebAssembly binary (no `\\0asm` preamble)".into());
    }
    let mut reader = wasmparser::BinaryReader::new(&bytes[8..], 8);
    let mut found = Vec::new();
    while !reader.eof() {
        let start = reader.original_position();
        let id = reader.read_u8().map_err(|e| e.message().to_owned())?;
        let size = reader.read_var_u32().map_err(|e| e.message().to_owned())?;
        let body_start = reader.original_position();
        let body = reader
            .read_bytes(size as usize)
            .map_err(|_| format!("section at byte {start} runs past the end of the binary"))?;
        if id == 0 {
            let mut inner = wasmparser::BinaryReader::new(body, body_start);
            let name = inner
                .read_string()
                .map_err(|e| format!("custom section at byte {start}: {}", e.message()))?;
            let name_end = inner.original_position() - body_start;
            found.push(Custom {
                name,
                data: &body[name_end..],
                range: start..body_start + size as usize,
            });
        }
    }
    Ok(found)
}

/// `bytes` with a custom section `name` holding `data` added at the end.
pub fn append(bytes: &[u8], name: &str, data: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out.push(0);
    wasm_encoder::CustomSection {
        name: name.into(),
        data: data.into(),
    }
    .encode(&mut out);
    out
}

/// `bytes` without its top-level custom sections named `name`.
///
/// # Errors
/// As [`custom_sections`].
pub fn without(bytes: &[u8], name: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    for section in custom_sections(bytes)?.iter().filter(|s| s.name == name) {
        out.extend_from_slice(&bytes[at..section.range.start]);
        at = section.range.end;
    }
    out.extend_from_slice(&bytes[at..]);
    Ok(out)
}

/// Whether `range` ends where `bytes` ends (the section is the binary's last).
pub fn is_last(bytes: &[u8], range: &Range<usize>) -> bool {
    range.end == bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty component: the preamble alone.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

    #[test]
    fn sections_append_read_back_and_strip() {
        let one = append(EMPTY_COMPONENT, "first", b"1");
        let two = append(&one, "second", &[7; 300]);
        let found = custom_sections(&two).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!((found[0].name, found[0].data), ("first", &b"1"[..]));
        assert_eq!((found[1].name, found[1].data.len()), ("second", 300));
        assert!(is_last(&two, &found[1].range));
        assert_eq!(&two[..found[1].range.start], &one[..]);
        assert_eq!(without(&two, "second").unwrap(), one);
        assert_eq!(
            without(&two, "first").unwrap().len(),
            two.len() - one.len() + 8
        );
    }

    #[test]
    fn a_truncated_binary_is_refused() {
        let bytes = append(EMPTY_COMPONENT, "name", b"data");
        assert!(custom_sections(&bytes[..bytes.len() - 1]).is_err());
        assert!(custom_sections(b"not wasm at all").is_err());
    }
}
