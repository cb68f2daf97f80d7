//! CIPD package instances: the zip format and instance IDs, as the protocol notes describe
//! them (section 1 of the team's CIPD notes).
//!
//! An instance is a zip of regular files plus `.cipdpkg/manifest.json`, written last. File
//! headers carry the Unix mode in the high 16 bits of the external attributes (creator
//! Unix), `0400` for a plain file, with the MS-DOS read-only bit (0x01) since nothing is
//! writable. No directory entries. Already-compressed files (our `.tar.zst` streams, our
//! small JSON files too) are Stored, so a stored file can be read straight from the zip.
//! The one deviation from the Go writer: the zip crate writes the DOS date 1980-01-01
//! rather than zero; instance IDs need not match across implementations, only be
//! deterministic, and they are (same files, same bytes).
//!
//! An **instance ID** is `base64url_nopad(sha256(zip bytes) ‖ [2])` (44 characters ending
//! in `C`), or for legacy SHA-1, the 40-digit lowercase hex digest.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use base64::Engine as _;
use base64::alphabet::URL_SAFE;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use sha2::{Digest as _, Sha256};

/// URL-safe base64 without padding; like Go's decoder, nonzero trailing bits are allowed.
const URL_SAFE_NO_PAD: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

/// The manifest's path inside an instance.
pub const MANIFEST: &str = ".cipdpkg/manifest.json";
/// The current manifest format.
pub const FORMAT_VERSION: &str = "1.1";

/// `HashAlgo` values.
pub const SHA1: u8 = 1;
pub const SHA256: u8 = 2;

/// Why a string is not an instance ID.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IidError {
    #[error("instance ID `{0}` is not 40 lowercase hex digits or unpadded URL-safe base64")]
    Malformed(String),
    #[error("instance ID `{0}` has hash algorithm 0")]
    NoAlgorithm(String),
    #[error("instance ID `{iid}` has an unknown hash algorithm {algo}")]
    UnknownAlgorithm { iid: String, algo: u8 },
    #[error("instance ID `{iid}` has a {len}-byte digest, not {want} for its algorithm")]
    WrongLength {
        iid: String,
        len: usize,
        want: usize,
    },
}

/// A decoded instance ID: the hash algorithm and the digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceId {
    pub algo: u8,
    pub digest: Vec<u8>,
}

impl InstanceId {
    /// The ID of a zip whose SHA-256 is `digest`.
    pub fn sha256(digest: [u8; 32]) -> InstanceId {
        InstanceId {
            algo: SHA256,
            digest: digest.to_vec(),
        }
    }

    /// Parses an ID. With `known_only` (as the server and hash verification do), unknown
    /// algorithms are refused; without it (round-tripping), they are kept.
    pub fn parse(iid: &str, known_only: bool) -> Result<InstanceId, IidError> {
        let malformed = || IidError::Malformed(iid.to_owned());
        if iid.len() == 40 {
            if !iid.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(malformed());
            }
            return Ok(InstanceId {
                algo: SHA1,
                digest: hex::decode(iid).map_err(|_| malformed())?,
            });
        }
        if iid.len() < 28 {
            return Err(malformed());
        }
        let bytes = URL_SAFE_NO_PAD.decode(iid).map_err(|_| malformed())?;
        if bytes.len() % 2 == 0 {
            return Err(malformed());
        }
        let (digest, algo) = bytes.split_at(bytes.len() - 1);
        let algo = algo[0];
        let want = match algo {
            0 => return Err(IidError::NoAlgorithm(iid.to_owned())),
            SHA1 => Some(20),
            SHA256 => Some(32),
            _ if known_only => {
                return Err(IidError::UnknownAlgorithm {
                    iid: iid.to_owned(),
                    algo,
                });
            }
            _ => None,
        };
        if let Some(want) = want
            && digest.len() != want
        {
            return Err(IidError::WrongLength {
                iid: iid.to_owned(),
                len: digest.len(),
                want,
            });
        }
        Ok(InstanceId {
            algo,
            digest: digest.to_vec(),
        })
    }

    /// The text form.
    pub fn to_text(&self) -> String {
        if self.algo == SHA1 {
            return hex::encode(&self.digest);
        }
        let mut b = self.digest.clone();
        b.push(self.algo);
        URL_SAFE_NO_PAD.encode(b)
    }

    /// The digest in lowercase hex (an `ObjectRef`'s `hex_digest`).
    pub fn hex(&self) -> String {
        hex::encode(&self.digest)
    }
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// The manifest as stored in an instance.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format_version: String,
    pub package_name: String,
}

/// A file of an instance being built: its path inside the package and where its bytes
/// come from.
pub enum Source<'a> {
    Bytes(&'a [u8]),
    File(&'a std::path::Path),
}

/// Writes an instance of `package` holding `files` (in the order given; callers sort) to
/// `out`, and returns its SHA-256. Every file is Stored with mode 0400.
pub fn build(
    out: &mut File,
    package: &str,
    files: &[(&str, Source<'_>)],
) -> std::io::Result<[u8; 32]> {
    let to_io = |e: zip::result::ZipError| std::io::Error::other(e.to_string());
    let mut zw = zip::ZipWriter::new(&mut *out);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default())
        .system(zip::System::Unix)
        // S_IFREG | 0400 in the high half; the MS-DOS read-only bit in the low half.
        .external_attributes((0o100400 << 16) | 0x01)
        .large_file(false);
    for (name, src) in files {
        if name.starts_with(".cipdpkg/") || name.starts_with(".cipd/") {
            return Err(std::io::Error::other(format!(
                "`{name}` is reserved in CIPD packages"
            )));
        }
        let size = match src {
            Source::Bytes(b) => b.len() as u64,
            Source::File(p) => std::fs::metadata(p)?.len(),
        };
        zw.start_file(*name, opts.large_file(size >= 0xffff_ffff))
            .map_err(to_io)?;
        match src {
            Source::Bytes(b) => zw.write_all(b)?,
            Source::File(p) => {
                std::io::copy(&mut File::open(p)?, &mut zw)?;
            }
        }
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION.into(),
        package_name: package.into(),
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::other)?;
    zw.start_file(MANIFEST, opts).map_err(to_io)?;
    zw.write_all(&json)?;
    zw.finish().map_err(to_io)?;
    out.flush()?;
    out.seek(SeekFrom::Start(0))?;
    sha256_of(out)
}

/// The SHA-256 of everything `r` yields.
pub fn sha256_of(r: &mut impl Read) -> std::io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0; 1 << 16];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize().into());
        }
        h.update(&buf[..n]);
    }
}

/// Why an instance cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("not a zip archive: {0}")]
    Zip(String),
    #[error("its manifest is missing or invalid: {0}")]
    Manifest(String),
    #[error("it is an instance of `{found}`, not of `{want}`")]
    WrongPackage { found: String, want: String },
    #[error("it has no file `{0}`")]
    Missing(String),
    #[error("file `{0}` is compressed; expected it Stored")]
    Compressed(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Checks an instance's manifest names `package`, and returns a reader of the Stored file
/// `name` (the instance file itself, positioned on the file's bytes).
pub fn open_file(
    mut zip_file: File,
    package: &str,
    name: &str,
) -> Result<std::io::Take<File>, ReadError> {
    let mut zip = zip::ZipArchive::new(&mut zip_file).map_err(|e| ReadError::Zip(e.to_string()))?;
    let manifest: Manifest = {
        let mut m = zip
            .by_name(MANIFEST)
            .map_err(|e| ReadError::Manifest(e.to_string()))?;
        let mut text = Vec::new();
        m.read_to_end(&mut text)?;
        serde_json::from_slice(&text).map_err(|e| ReadError::Manifest(e.to_string()))?
    };
    if manifest.package_name != package {
        return Err(ReadError::WrongPackage {
            found: manifest.package_name,
            want: package.into(),
        });
    }
    let (start, size) = {
        let f = zip
            .by_name(name)
            .map_err(|_| ReadError::Missing(name.into()))?;
        if f.compression() != zip::CompressionMethod::Stored {
            return Err(ReadError::Compressed(name.into()));
        }
        let start = f
            .data_start()
            .ok_or_else(|| ReadError::Zip(format!("no data offset for `{name}`")))?;
        (start, f.size())
    };
    drop(zip);
    zip_file.seek(SeekFrom::Start(start))?;
    Ok(zip_file.take(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID_SHA256: &str = "B7r75joOfFfFcq7fHCKAIrU34oeFAT174Bf8eHMajMUC";

    /// The notes' vectors (section 1.4).
    #[test]
    fn instance_ids_match_the_spec_vectors() {
        let sha1 = "a".repeat(40);
        assert_eq!(InstanceId::parse(&sha1, true).unwrap().algo, SHA1);
        let id = InstanceId::parse(VALID_SHA256, true).unwrap();
        assert_eq!(id.algo, SHA256);
        assert_eq!(
            id.hex(),
            "07bafbe63a0e7c57c572aedf1c228022b537e28785013d7be017fc78731a8cc5"
        );
        assert_eq!(id.to_text(), VALID_SHA256);

        let invalid = [
            "a".repeat(41),
            "A".repeat(40),
            "g".repeat(40),
            format!("{VALID_SHA256}=="),
            format!("/{}", &VALID_SHA256[1..]),
            format!("{}A", &VALID_SHA256[..43]),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAC".to_owned(),
        ];
        for bad in &invalid {
            assert!(InstanceId::parse(bad, false).is_err(), "{bad} is invalid");
        }
        // Unknown algorithms: kept when round-tripping, refused when verifying.
        let algo3 = format!("{}D", &VALID_SHA256[..43]);
        let hex39 = "a".repeat(39);
        for any in [&algo3, &hex39] {
            assert!(InstanceId::parse(any, false).is_ok(), "{any} (AnyHash)");
            assert!(InstanceId::parse(any, true).is_err(), "{any} (KnownHash)");
        }

        // The golden empty package's zip SHA-256 and ID.
        let golden: [u8; 32] =
            hex::decode("3cf335f34fb98be575ab9e79e1ec0a18ee23ab871607e70ec13bb28680afde3a")
                .unwrap()
                .try_into()
                .unwrap();
        let id = InstanceId::sha256(golden);
        assert_eq!(id.to_text(), "PPM180-5i-V1q5554ewKGO4jq4cWB-cOwTuyhoCv3joC");
        assert_eq!(id.to_text().len(), 44);
        assert!(id.to_text().ends_with('C'));
    }

    #[test]
    fn instances_are_deterministic_and_laid_out_as_cipd_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        let build_one = |n: &str| {
            let path = dir.path().join(n);
            let mut f = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap();
            let sha = build(
                &mut f,
                "a/pkg",
                &[("data.bin", Source::Bytes(b"payload bytes"))],
            )
            .unwrap();
            (path, sha)
        };
        let (p1, s1) = build_one("one.zip");
        let (_, s2) = build_one("two.zip");
        assert_eq!(s1, s2, "same files, same instance");
        assert_eq!(
            s1,
            sha256_of(&mut File::open(&p1).unwrap()).unwrap(),
            "the ID covers the whole file"
        );

        let mut zip = zip::ZipArchive::new(File::open(&p1).unwrap()).unwrap();
        let names: Vec<String> = zip.file_names().map(|n| n.unwrap().into_owned()).collect();
        assert_eq!(names, ["data.bin", MANIFEST], "the manifest comes last");
        for i in 0..zip.len() {
            let f = zip.by_index(i).unwrap();
            assert_eq!(f.unix_mode(), Some(0o100400), "{:?}", f.name());
            assert_eq!(f.external_attributes() & 0xffff, 0x01, "read-only bit");
            assert_eq!(f.compression(), zip::CompressionMethod::Stored);
            assert!(
                f.extra_data().is_none_or(|d| d.is_empty()),
                "no extra fields"
            );
        }
        let mut text = String::new();
        zip.by_name(MANIFEST)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(
            text,
            "{\n  \"format_version\": \"1.1\",\n  \"package_name\": \"a/pkg\"\n}"
        );

        let mut r = open_file(File::open(&p1).unwrap(), "a/pkg", "data.bin").unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"payload bytes");
        let err = open_file(File::open(&p1).unwrap(), "b/pkg", "data.bin").unwrap_err();
        assert!(matches!(err, ReadError::WrongPackage { .. }), "{err}");
    }
}
