//! A reader for NumPy `.npy` files holding a 2-D float matrix, for
//! `funnel import` of vectors trained elsewhere.
//!
//! Owns: parsing the `.npy` header (format 1.0, 2.0 and 3.0) and decoding
//! little-endian `float32` / `float64` C-ordered 2-D data into a `Matrix`.
//! Must not touch: ids, bundles or any other file format.
//!
//! Format facts (from the NumPy format specification): magic `\x93NUMPY`,
//! one byte major and one byte minor version, then the header length as
//! little-endian u16 (1.0) or u32 (2.0, 3.0), then a Python dict literal
//! with keys `descr`, `fortran_order` and `shape`, padded with spaces and
//! ending in `\n`; the raw array data follows. Anything we cannot read
//! faithfully (other dtypes, big-endian, Fortran order, not 2-D) is refused
//! with an error that says what was found and how to convert it.

use crate::matrix::Matrix;

/// Why a `.npy` file could not be read as a 2-D float matrix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NpyError {
    #[error("not a .npy file (it does not start with \\x93NUMPY); save the array with numpy.save")]
    NotNpy,
    #[error(
        ".npy format version {major}.{minor} is not supported; numpy.save writes 1.0, 2.0 or 3.0"
    )]
    Version { major: u8, minor: u8 },
    #[error(".npy file is truncated: {0}; copy or save it again")]
    Truncated(String),
    #[error(".npy header is malformed: {0}; save the array again with numpy.save")]
    Header(String),
    #[error("dtype {0} is not supported; convert with arr.astype('<f4') (little-endian float32 or float64 are accepted)")]
    Dtype(String),
    #[error("array is stored in Fortran order; save a C-ordered copy: numpy.save(path, numpy.ascontiguousarray(arr))")]
    FortranOrder,
    #[error("array has shape {0}; expected a 2-D array of shape (rows, dimension)")]
    Shape(String),
    #[error("array data is {actual} bytes but shape ({rows}, {cols}) of {dtype} needs {expected}; the file is damaged: save it again")]
    DataLength {
        rows: usize,
        cols: usize,
        dtype: String,
        expected: usize,
        actual: usize,
    },
}

/// Element types we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDtype {
    F4,
    F8,
}

impl NpyDtype {
    fn size(self) -> usize {
        match self {
            NpyDtype::F4 => 4,
            NpyDtype::F8 => 8,
        }
    }

    fn name(self) -> &'static str {
        match self {
            NpyDtype::F4 => "'<f4'",
            NpyDtype::F8 => "'<f8'",
        }
    }
}

/// A parsed header: what the data that follows it looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    pub dtype: NpyDtype,
    pub rows: usize,
    pub cols: usize,
    /// Offset of the first data byte in the file.
    pub data_offset: usize,
}

/// Parses a whole `.npy` file into a `rows x cols` f32 matrix (`<f8`
/// values are rounded to f32; values outside f32 range become infinite and
/// are caught by the importer's finiteness check).
pub fn parse_npy(bytes: &[u8]) -> Result<Matrix, NpyError> {
    let h = parse_header(bytes)?;
    let data = &bytes[h.data_offset..];
    let expected = h
        .rows
        .checked_mul(h.cols)
        .and_then(|n| n.checked_mul(h.dtype.size()))
        .ok_or_else(|| NpyError::Shape(format!("({}, {}) (too large)", h.rows, h.cols)))?;
    if data.len() != expected {
        return Err(NpyError::DataLength {
            rows: h.rows,
            cols: h.cols,
            dtype: h.dtype.name().to_owned(),
            expected,
            actual: data.len(),
        });
    }
    let values: Vec<f32> = match h.dtype {
        NpyDtype::F4 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("chunks_exact(4) yields 4 bytes")))
            .collect(),
        NpyDtype::F8 => data
            .chunks_exact(8)
            .map(|c| {
                f64::from_le_bytes(c.try_into().expect("chunks_exact(8) yields 8 bytes")) as f32
            })
            .collect(),
    };
    Ok(Matrix::from_vec(h.rows, h.cols, values).expect("length was checked against the shape"))
}

/// Parses the magic, version and header dict.
pub fn parse_header(bytes: &[u8]) -> Result<NpyHeader, NpyError> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(NpyError::NotNpy);
    }
    if bytes.len() < 10 {
        return Err(NpyError::Truncated(
            "the version and header length are missing".into(),
        ));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_start, header_len): (usize, usize) = match (major, minor) {
        (1, 0) => (10, u16::from_le_bytes([bytes[8], bytes[9]]) as usize),
        (2, 0) | (3, 0) => {
            if bytes.len() < 12 {
                return Err(NpyError::Truncated("the header length is missing".into()));
            }
            let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (12, len as usize)
        }
        _ => return Err(NpyError::Version { major, minor }),
    };
    let data_offset = header_start
        .checked_add(header_len)
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| {
            NpyError::Truncated(format!(
                "the header claims {header_len} bytes but the file has {}",
                bytes.len() - header_start
            ))
        })?;
    let text = std::str::from_utf8(&bytes[header_start..data_offset])
        .map_err(|_| NpyError::Header("header is not text".into()))?;
    let dict = parse_dict(text)?;

    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    for (key, value) in dict {
        match (key.as_str(), value) {
            ("descr", Value::Str(s)) => descr = Some(s),
            ("descr", Value::List) => {
                return Err(NpyError::Dtype("(a structured record type)".into()))
            }
            ("fortran_order", Value::Bool(b)) => fortran = Some(b),
            ("shape", Value::Tuple(t)) => shape = Some(t),
            ("descr" | "fortran_order" | "shape", other) => {
                return Err(NpyError::Header(format!(
                    "key {key:?} has an unexpected value {other:?}"
                )))
            }
            // Later numpy versions may add keys; they do not change the data layout.
            _ => {}
        }
    }
    let descr = descr.ok_or_else(|| NpyError::Header("no 'descr' key".into()))?;
    let fortran = fortran.ok_or_else(|| NpyError::Header("no 'fortran_order' key".into()))?;
    let shape = shape.ok_or_else(|| NpyError::Header("no 'shape' key".into()))?;
    let dtype = match descr.as_str() {
        "<f4" => NpyDtype::F4,
        "<f8" => NpyDtype::F8,
        other => return Err(NpyError::Dtype(format!("'{other}'"))),
    };
    if fortran {
        return Err(NpyError::FortranOrder);
    }
    let [rows, cols] = shape[..] else {
        let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
        let shown = if dims.len() == 1 {
            format!("({},)", dims[0])
        } else {
            format!("({})", dims.join(", "))
        };
        return Err(NpyError::Shape(shown));
    };
    let to_usize = |v: u64| {
        usize::try_from(v).map_err(|_| NpyError::Shape(format!("({rows}, {cols}) (too large)")))
    };
    Ok(NpyHeader {
        dtype,
        rows: to_usize(rows)?,
        cols: to_usize(cols)?,
        data_offset,
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<u64>),
    /// A list (structured dtypes); its content is not needed.
    List,
}

/// Parses the small Python dict literal numpy writes; only the value kinds
/// numpy uses for these keys are understood.
fn parse_dict(text: &str) -> Result<Vec<(String, Value)>, NpyError> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    p.ws();
    p.expect(b'{')?;
    let mut out = Vec::new();
    loop {
        p.ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.ws();
        p.expect(b':')?;
        p.ws();
        let value = p.value()?;
        out.push((key, value));
        p.ws();
        if !p.eat(b',') {
            p.ws();
            p.expect(b'}')?;
            break;
        }
    }
    p.ws();
    if p.i != p.s.len() {
        return Err(NpyError::Header("unexpected text after the dict".into()));
    }
    Ok(out)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), NpyError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(NpyError::Header(format!(
                "expected {:?} at byte {}",
                c as char, self.i
            )))
        }
    }

    fn string(&mut self) -> Result<String, NpyError> {
        let quote = match self.s.get(self.i) {
            Some(&q @ (b'\'' | b'"')) => q,
            _ => {
                return Err(NpyError::Header(format!(
                    "expected a string at byte {}",
                    self.i
                )))
            }
        };
        self.i += 1;
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i] != quote {
            self.i += 1;
        }
        if self.i >= self.s.len() {
            return Err(NpyError::Header("unterminated string".into()));
        }
        let s = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        self.i += 1;
        Ok(s)
    }

    fn word(&mut self, w: &str) -> bool {
        if self.s[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            true
        } else {
            false
        }
    }

    fn int(&mut self) -> Result<u64, NpyError> {
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
            self.i += 1;
        }
        // numpy 1.x wrote Python 2 longs such as `3L` in old files.
        let digits = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
        let v = digits
            .parse::<u64>()
            .map_err(|_| NpyError::Header(format!("expected a dimension at byte {start}")))?;
        self.eat(b'L');
        Ok(v)
    }

    /// Skips a (possibly nested) list literal, strings included.
    fn skip_list(&mut self) -> Result<(), NpyError> {
        let mut depth = 0usize;
        while let Some(&c) = self.s.get(self.i) {
            match c {
                b'\'' | b'"' => {
                    self.string()?;
                    continue;
                }
                b'[' | b'(' => depth += 1,
                b']' | b')' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        self.i += 1;
                        return Ok(());
                    }
                }
                _ => {}
            }
            self.i += 1;
        }
        Err(NpyError::Header("unterminated list".into()))
    }

    fn value(&mut self) -> Result<Value, NpyError> {
        match self.s.get(self.i) {
            Some(b'\'' | b'"') => Ok(Value::Str(self.string()?)),
            Some(b'(') => {
                self.i += 1;
                let mut dims = Vec::new();
                loop {
                    self.ws();
                    if self.eat(b')') {
                        break;
                    }
                    dims.push(self.int()?);
                    self.ws();
                    if !self.eat(b',') {
                        self.ws();
                        self.expect(b')')?;
                        break;
                    }
                }
                Ok(Value::Tuple(dims))
            }
            Some(b'[') => {
                self.skip_list()?;
                Ok(Value::List)
            }
            _ if self.word("True") => Ok(Value::Bool(true)),
            _ if self.word("False") => Ok(Value::Bool(false)),
            _ => Err(NpyError::Header(format!(
                "unexpected value at byte {}",
                self.i
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a `.npy` file by hand: header padded so data starts on a
    /// 64-byte boundary, as numpy does.
    fn npy(version: u8, header: &str, data: &[u8]) -> Vec<u8> {
        let prefix = if version == 1 { 10 } else { 12 };
        let mut h = header.to_owned();
        while (prefix + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY".to_vec();
        out.push(version);
        out.push(0);
        if version == 1 {
            out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(h.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn f4(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn f8(values: &[f64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn reads_v1_float32() {
        let bytes = npy(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
            &f4(&[1.0, 2.0, 3.0, 4.0, 5.0, -6.5]),
        );
        let m = parse_npy(&bytes).unwrap();
        assert_eq!((m.rows(), m.cols()), (2, 3));
        assert_eq!(m.row(1), &[4.0, 5.0, -6.5]);
    }

    #[test]
    fn reads_v1_float64_and_v2_v3_headers() {
        let data = f8(&[0.5, -1.25, 1e-3, 7.0]);
        let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }";
        for v in [1u8, 2, 3] {
            let m = parse_npy(&npy(v, header, &data)).unwrap();
            assert_eq!(m.row(0), &[0.5, -1.25]);
            assert_eq!(m.row(1), &[1e-3f64 as f32, 7.0]);
        }
        // double-quoted keys, no trailing comma, no spaces
        let m = parse_npy(&npy(
            1,
            "{\"shape\":(1,1),\"fortran_order\":False,\"descr\":\"<f4\"}",
            &f4(&[3.0]),
        ))
        .unwrap();
        assert_eq!(m.row(0), &[3.0]);
    }

    #[test]
    fn wrong_dtype_is_named() {
        for (descr, shown) in [("<i8", "'<i8'"), (">f4", "'>f4'"), ("<f2", "'<f2'")] {
            let header =
                format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (1, 1), }}");
            let err = parse_npy(&npy(1, &header, &[0; 8])).unwrap_err();
            assert_eq!(err, NpyError::Dtype(shown.into()));
            assert!(err.to_string().contains(shown) && err.to_string().contains("astype"));
        }
        let structured = "{'descr': [('x', '<f4')], 'fortran_order': False, 'shape': (1,), }";
        assert!(matches!(
            parse_npy(&npy(1, structured, &[0; 4])),
            Err(NpyError::Dtype(_))
        ));
    }

    #[test]
    fn fortran_order_is_refused() {
        let header = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }";
        let err = parse_npy(&npy(1, header, &f4(&[1.0; 4]))).unwrap_err();
        assert_eq!(err, NpyError::FortranOrder);
        assert!(err.to_string().contains("ascontiguousarray"));
    }

    #[test]
    fn shapes_other_than_2d_are_refused_with_the_shape() {
        for (shape, shown) in [("(4,)", "(4,)"), ("(1, 2, 2)", "(1, 2, 2)"), ("()", "()")] {
            let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
            let err = parse_npy(&npy(1, &header, &f4(&[1.0; 4]))).unwrap_err();
            assert_eq!(err, NpyError::Shape(shown.into()), "{shape}");
        }
    }

    #[test]
    fn damaged_files_are_refused() {
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }";
        let good = npy(1, header, &f4(&[1.0; 4]));
        assert!(matches!(
            parse_npy(&good[..good.len() - 1]),
            Err(NpyError::DataLength {
                expected: 16,
                actual: 15,
                ..
            })
        ));
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(
            parse_npy(&longer),
            Err(NpyError::DataLength { .. })
        ));
        assert!(matches!(
            parse_npy(&good[..20]),
            Err(NpyError::Truncated(_))
        ));
        assert_eq!(parse_npy(b"PK\x03\x04 zip"), Err(NpyError::NotNpy));
        let mut v4 = good.clone();
        v4[6] = 4;
        assert_eq!(
            parse_npy(&v4),
            Err(NpyError::Version { major: 4, minor: 0 })
        );
        let bad_dict = npy(1, "{'descr': '<f4', 'shape': (2, 2)", &f4(&[1.0; 4]));
        assert!(matches!(parse_npy(&bad_dict), Err(NpyError::Header(_))));
        let missing = npy(1, "{'descr': '<f4', 'shape': (2, 2)}", &f4(&[1.0; 4]));
        assert!(matches!(parse_npy(&missing), Err(NpyError::Header(_))));
    }

    #[test]
    fn empty_matrix_is_read() {
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 5), }";
        let m = parse_npy(&npy(1, header, &[])).unwrap();
        assert_eq!((m.rows(), m.cols()), (0, 5));
    }
}
