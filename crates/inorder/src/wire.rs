//! Little building blocks of the engine's binary encodings: LEB128 varints, zigzag, and a
//! bounds-checked input cursor that reports malformations instead of panicking.

use bytes::Bytes;

pub(crate) fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(u8::try_from(n & 0x7f).expect("seven bits") | 0x80);
        n >>= 7;
    }
    out.push(u8::try_from(n).expect("below 0x80"));
}

pub(crate) fn put_str(out: &mut Vec<u8>, text: &str) {
    put_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

pub(crate) fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)).cast_unsigned()
}

pub(crate) fn unzigzag(n: u64) -> i64 {
    (n >> 1).cast_signed() ^ -((n & 1).cast_signed())
}

/// A bounds-checked cursor over encoded bytes.
pub(crate) struct Input<'a> {
    bytes: &'a Bytes,
    at: usize,
}

impl Input<'_> {
    pub(crate) fn byte(&mut self) -> Result<u8, &'static str> {
        let byte = *self.bytes.get(self.at).ok_or("cut short")?;
        self.at += 1;
        Ok(byte)
    }

    pub(crate) fn varint(&mut self) -> Result<u64, &'static str> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            n |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err("varint longer than 64 bits")
    }

    pub(crate) fn len(&mut self) -> Result<usize, &'static str> {
        let len = usize::try_from(self.varint()?).map_err(|_| "length out of range")?;
        if len > self.bytes.len() - self.at {
            return Err("length runs past the end of the event");
        }
        Ok(len)
    }

    pub(crate) fn string(&mut self) -> Result<String, &'static str> {
        let len = self.len()?;
        let text = std::str::from_utf8(&self.bytes[self.at..self.at + len])
            .map_err(|_| "a text field is not UTF-8")?;
        self.at += len;
        Ok(text.to_owned())
    }

    pub(crate) fn bytes(&mut self) -> Result<Bytes, &'static str> {
        let len = self.len()?;
        let data = self.bytes.slice(self.at..self.at + len);
        self.at += len;
        Ok(data)
    }
}

impl<'a> Input<'a> {
    /// A cursor at the start of `bytes`.
    pub(crate) fn new(bytes: &'a Bytes) -> Self {
        Self { bytes, at: 0 }
    }

    /// Whether every byte was consumed.
    pub(crate) fn is_done(&self) -> bool {
        self.at == self.bytes.len()
    }
}

/// Appends an optional string: a presence byte, then the string.
pub(crate) fn put_opt_str(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => {
            out.push(1);
            put_str(out, text);
        }
        None => out.push(0),
    }
}

impl Input<'_> {
    /// An optional string written by [`put_opt_str`].
    pub(crate) fn opt_string(&mut self) -> Result<Option<String>, &'static str> {
        match self.byte()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            _ => Err("bad presence byte"),
        }
    }
}
