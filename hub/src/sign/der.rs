//! The little DER this module needs: a reader that hands out the exact bytes of each element
//! (so a certificate's issuer and serial are copied verbatim into the signature, as OpenSSL
//! does), and a writer for the CMS structure.

/// Universal tags used here.
pub const INTEGER: u8 = 0x02;
pub const BIT_STRING: u8 = 0x03;
pub const OCTET_STRING: u8 = 0x04;
pub const NULL: u8 = 0x05;
pub const OID: u8 = 0x06;
pub const SEQUENCE: u8 = 0x30;
pub const SET: u8 = 0x31;
/// `[0]` constructed, context-specific.
pub const CONTEXT_0: u8 = 0xa0;

/// One element: its tag, its content and the whole encoding (tag, length and content).
#[derive(Clone, Copy, Debug)]
pub struct Tlv<'a> {
    pub tag: u8,
    pub content: &'a [u8],
    pub raw: &'a [u8],
}

/// Reads consecutive DER elements from a byte slice.
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next element, or why it cannot be read. Only definite lengths (DER) are accepted.
    pub fn next(&mut self) -> Result<Tlv<'a>, &'static str> {
        let b = self.rest;
        if b.len() < 2 {
            return Err("truncated DER element");
        }
        let tag = b[0];
        if tag & 0x1f == 0x1f {
            return Err("multi-byte DER tags are not supported");
        }
        let (len, hdr) = match b[1] {
            l if l < 0x80 => (usize::from(l), 2),
            0x80 => return Err("indefinite length is not DER"),
            l => {
                let n = usize::from(l & 0x7f);
                if n > 4 || b.len() < 2 + n {
                    return Err("bad DER length");
                }
                let len = b[2..2 + n].iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
                (len, 2 + n)
            }
        };
        let end = hdr.checked_add(len).ok_or("bad DER length")?;
        if b.len() < end {
            return Err("truncated DER element");
        }
        self.rest = &b[end..];
        Ok(Tlv {
            tag,
            content: &b[hdr..end],
            raw: &b[..end],
        })
    }

    /// The next element, which must carry `tag`.
    pub fn expect(&mut self, tag: u8, what: &'static str) -> Result<Tlv<'a>, &'static str> {
        let t = self.next().map_err(|_| what)?;
        if t.tag != tag {
            return Err(what);
        }
        Ok(t)
    }
}

/// Appends a DER length.
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// One DER element from a tag and its content.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    push_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// One constructed element from already encoded children.
pub fn cons(tag: u8, children: &[&[u8]]) -> Vec<u8> {
    tlv(tag, &children.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_minimal() {
        assert_eq!(tlv(OCTET_STRING, &[0; 3])[..2], [0x04, 0x03]);
        assert_eq!(tlv(OCTET_STRING, &[0; 0x7f])[..2], [0x04, 0x7f]);
        assert_eq!(tlv(OCTET_STRING, &[0; 0x80])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(tlv(OCTET_STRING, &[0; 0x100])[..4], [0x04, 0x82, 0x01, 0x00]);
        assert_eq!(tlv(OCTET_STRING, &[0; 0x1_0000])[..5], [0x04, 0x83, 0x01, 0x00, 0x00]);
    }

    #[test]
    fn reader_round_trips_and_rejects_garbage() {
        let inner = tlv(INTEGER, &[1]);
        let outer = cons(SEQUENCE, &[&inner, &tlv(NULL, &[])]);
        let mut r = Reader::new(&outer);
        let seq = r.expect(SEQUENCE, "seq").unwrap();
        assert!(r.is_empty());
        assert_eq!(seq.raw, &outer[..]);
        let mut r = Reader::new(seq.content);
        let i = r.expect(INTEGER, "int").unwrap();
        assert_eq!(i.content, [1]);
        assert_eq!(i.raw, &inner[..]);
        assert_eq!(r.next().unwrap().tag, NULL);
        assert!(r.next().is_err());

        assert!(Reader::new(&[0x30, 0x80, 0, 0]).next().is_err());
        assert!(Reader::new(&[0x30, 0x05, 0]).next().is_err());
        assert!(Reader::new(&[0x30, 0x85, 1, 1, 1, 1, 1]).next().is_err());
    }
}
