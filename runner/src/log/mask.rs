//! Secret masking: every value handed to a stage is replaced by `***` in what the stage
//! prints, before a byte of it is written to disk or streamed, on the daemon and on remote
//! runners alike.
//!
//! What is masked, per value: the value; each line of a multi-line value; its base64 (standard
//! and URL-safe alphabets, with and without padding) and its percent-encoded form. One
//! Aho–Corasick automaton finds them all in one pass, leftmost-longest, so the cost does not
//! grow with the number of secrets the way a loop of `replace` would.
//!
//! No pattern contains a newline (a multi-line value is masked line by line), so a match never
//! spans two lines: a stream only ever holds back the unfinished last line, and only its last
//! `longest pattern - 1` bytes. A value split across writes is still masked, and a completed
//! line is never delayed.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use tokio::io::{AsyncRead, ReadBuf};

/// What a masked value becomes.
pub const MASK: &[u8] = b"***";

/// Every form of every secret a stage was given, compiled once per attempt and shared by the
/// attempt's streams.
#[derive(Debug, Clone)]
pub struct SecretMask {
    /// None when there is nothing to mask: the common case costs one branch.
    automaton: Option<AhoCorasick>,
    longest: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the secret-masking automaton: {0}")]
pub struct MaskError(#[from] aho_corasick::BuildError);

impl SecretMask {
    /// A mask that changes nothing.
    pub fn none() -> SecretMask {
        SecretMask {
            automaton: None,
            longest: 0,
        }
    }

    /// The mask of `values` (their bytes as given to the stage). Empty values are ignored:
    /// masking the empty string would mean nothing.
    pub fn new<V: AsRef<[u8]>>(values: &[V]) -> Result<SecretMask, MaskError> {
        let mut patterns: Vec<Vec<u8>> = values
            .iter()
            .flat_map(|v| forms(v.as_ref()))
            .filter(|p| !p.is_empty() && !p.contains(&b'\n'))
            .collect();
        patterns.sort();
        patterns.dedup();
        if patterns.is_empty() {
            return Ok(SecretMask::none());
        }
        let longest = patterns.iter().map(Vec::len).max().unwrap_or(0);
        let automaton = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)?;
        Ok(SecretMask {
            automaton: Some(automaton),
            longest,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.automaton.is_none()
    }

    /// `line` with every form of every secret replaced by `***`; borrowed when nothing
    /// matched. For text that is complete (a whole line): a value cut in two by the end of
    /// `line` is not found, which is what [`MaskStream`] is for.
    pub fn mask_line<'a>(&self, line: &'a str) -> Cow<'a, str> {
        let Some(automaton) = &self.automaton else {
            return Cow::Borrowed(line);
        };
        if automaton.find(line).is_none() {
            return Cow::Borrowed(line);
        }
        // A pattern is any bytes, so a match could in principle end inside a character.
        Cow::Owned(String::from_utf8_lossy(&replace_all(automaton, line.as_bytes())).into_owned())
    }

    /// A streaming masker over this mask, for one output stream.
    pub fn stream(self: &Arc<Self>) -> MaskStream {
        MaskStream {
            mask: Arc::clone(self),
            held: Vec::new(),
        }
    }
}

/// Every replaced occurrence in `haystack`, leftmost-longest, as bytes.
fn replace_all(automaton: &AhoCorasick, haystack: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut at = 0;
    for found in automaton.find_iter(haystack) {
        out.extend_from_slice(&haystack[at..found.start()]);
        out.extend_from_slice(MASK);
        at = found.end();
    }
    out.extend_from_slice(&haystack[at..]);
    out
}

/// The forms of one value that are masked.
fn forms(value: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = vec![value.to_vec()];
    forms.extend(
        value
            .split(|&b| b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line).to_vec()),
    );
    for alphabet in [STANDARD, URL_SAFE] {
        let encoded = base64(value, alphabet);
        let unpadded = encoded.trim_end_matches('=').to_string();
        forms.push(encoded.into_bytes());
        forms.push(unpadded.into_bytes());
    }
    forms.push(percent_encode(value).into_bytes());
    forms
}

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// RFC 4648 base64 with padding.
fn base64(bytes: &[u8], alphabet: &[u8; 64]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(alphabet[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// RFC 3986 percent-encoding of everything but the unreserved characters, as URLs and form
/// bodies carry a value (`a b&c` → `a%20b%26c`).
fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Masks one stream whose bytes arrive in pieces of any size.
#[derive(Debug)]
pub struct MaskStream {
    mask: Arc<SecretMask>,
    /// The undecided end of the unfinished last line: it may begin a secret whose rest has
    /// not arrived yet.
    held: Vec<u8>,
}

impl MaskStream {
    /// Masks `input`, appending to `out` every byte that is decided; keeps back at most the
    /// longest pattern's length minus one, and never a completed line.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let Some(automaton) = &self.mask.automaton else {
            out.extend_from_slice(input);
            return;
        };
        let owned;
        let buffer: &[u8] = if self.held.is_empty() {
            input
        } else {
            self.held.extend_from_slice(input);
            owned = std::mem::take(&mut self.held);
            &owned
        };
        // A match starting before `decided` is whole in `buffer`: either a newline follows
        // it (no pattern crosses one) or every pattern's length fits before the end.
        let after_newline = buffer
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let window = buffer.len().saturating_sub(self.mask.longest - 1);
        let decided = after_newline.max(window);
        let mut at = 0;
        for found in automaton.find_iter(buffer) {
            if found.start() >= decided {
                break;
            }
            out.extend_from_slice(&buffer[at..found.start()]);
            out.extend_from_slice(MASK);
            at = found.end();
        }
        let emit_to = decided.max(at);
        out.extend_from_slice(&buffer[at..emit_to]);
        self.held = buffer[emit_to..].to_vec();
    }

    /// The stream ended: masks and returns what was held back.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let held = std::mem::take(&mut self.held);
        match &self.mask.automaton {
            Some(automaton) => out.extend_from_slice(&replace_all(automaton, &held)),
            None => out.extend_from_slice(&held),
        }
    }
}

/// An [`AsyncRead`] that yields what `inner` yields, masked: wrap a stage's stdout or stderr
/// (or a container's log stream) in it before anything reads lines from it.
pub struct MaskingReader<R> {
    inner: R,
    stream: MaskStream,
    /// Masked bytes not yet handed to the reader, and how many of them were.
    ready: Vec<u8>,
    given: usize,
    scratch: Box<[u8]>,
    ended: bool,
}

impl<R> MaskingReader<R> {
    pub fn new(inner: R, mask: &Arc<SecretMask>) -> MaskingReader<R> {
        MaskingReader {
            inner,
            stream: mask.stream(),
            ready: Vec::new(),
            given: 0,
            scratch: vec![0; 16 * 1024].into_boxed_slice(),
            ended: false,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for MaskingReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.given < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.given);
                buf.put_slice(&this.ready[this.given..this.given + n]);
                this.given += n;
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            this.ready.clear();
            this.given = 0;
            let mut scratch = ReadBuf::new(&mut this.scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut scratch) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if scratch.filled().is_empty() => {
                    this.ended = true;
                    this.stream.finish(&mut this.ready);
                }
                // Everything may be held back (the start of a secret): read on rather than
                // return zero bytes, which would mean the end of the stream.
                Poll::Ready(Ok(())) => this.stream.push(scratch.filled(), &mut this.ready),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn mask(values: &[&str]) -> Arc<SecretMask> {
        Arc::new(SecretMask::new(values).expect("builds"))
    }

    /// `text` pushed through a stream in pieces of the given sizes (cycled).
    fn streamed(mask: &Arc<SecretMask>, text: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut stream = mask.stream();
        let mut out = Vec::new();
        let mut rest = text;
        for size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at((*size).clamp(1, rest.len()));
            stream.push(piece, &mut out);
            rest = tail;
        }
        stream.finish(&mut out);
        out
    }

    /// A deterministic pseudo-random sequence (xorshift), so failures replay.
    fn sequence(seed: u64) -> impl Iterator<Item = u64> {
        let mut x = seed.max(1);
        std::iter::from_fn(move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Some(x)
        })
    }

    #[test]
    fn a_one_byte_secret_is_masked_everywhere() {
        let m = mask(&["x"]);
        assert_eq!(m.mask_line("axbxx"), "a***b******");
        assert_eq!(streamed(&m, b"axb\nx", &[1]), b"a***b\n***");
    }

    #[test]
    fn a_4096_byte_secret_is_masked_whatever_the_pieces() {
        let secret: String = sequence(7)
            .take(4096)
            .map(|n| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[(n % 36) as usize]))
            .collect();
        let m = mask(&[secret.as_str()]);
        let text = format!("token={secret} end\nagain {secret}\n");
        for sizes in [&[1][..], &[7], &[4095], &[4096], &[5000], &[3, 1000, 17]] {
            let out = streamed(&m, text.as_bytes(), sizes);
            assert_eq!(out, b"token=*** end\nagain ***\n", "pieces {sizes:?}");
        }
    }

    #[test]
    fn each_line_of_a_multi_line_value_is_masked() {
        let m = mask(&["-----BEGIN KEY-----\r\nMIIBVwIBADANBg\n-----END KEY-----"]);
        let out = streamed(&m, b"cat key:\nMIIBVwIBADANBg\n-----END KEY-----\n", &[2]);
        assert_eq!(out, b"cat key:\n***\n***\n");
        assert_eq!(m.mask_line("-----BEGIN KEY-----"), "***");
    }

    #[test]
    fn base64_and_percent_encoded_forms_are_masked() {
        let secret = "p@ss w/rd+?>";
        let m = mask(&[secret]);
        for form in [
            base64(secret.as_bytes(), STANDARD),
            base64(secret.as_bytes(), URL_SAFE),
            percent_encode(secret.as_bytes()),
        ] {
            let line = format!("sent {form} to the server");
            let masked = m.mask_line(&line);
            assert!(!masked.contains(&form), "{form} in {masked}");
        }
        assert_eq!(
            m.mask_line("Authorization: Basic cEBzcyB3L3JkKz8+"),
            "Authorization: Basic ***"
        );
        assert_eq!(m.mask_line("q=p%40ss%20w%2Frd%2B%3F%3E&x=1"), "q=***&x=1");
        // An unpadded form of a value whose length is not a multiple of three.
        let m = mask(&["ab"]);
        assert_eq!(m.mask_line("YWI YWI="), "*** ***");
    }

    #[test]
    fn rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes(), STANDARD), encoded);
        }
        assert_eq!(base64(&[0xfb, 0xff], URL_SAFE), "-_8=");
        assert_eq!(base64(&[0xfb, 0xff], STANDARD), "+/8=");
    }

    #[test]
    fn the_longest_overlapping_secret_wins() {
        let m = mask(&["abc", "abcdef"]);
        assert_eq!(streamed(&m, b"xabcdefx abcx\n", &[1]), b"x***x ***x\n");
        assert_eq!(streamed(&m, b"abcde", &[1]), b"***de");
    }

    #[test]
    fn a_completed_line_is_never_held_back() {
        let m = mask(&["secret-value"]);
        let mut stream = m.stream();
        let mut out = Vec::new();
        stream.push(b"building\nsecret-", &mut out);
        assert_eq!(out, b"building\n", "the unfinished line may start a secret");
        stream.push(b"value done\n", &mut out);
        assert_eq!(out, b"building\n*** done\n");
        stream.finish(&mut out);
        assert_eq!(out, b"building\n*** done\n");
    }

    #[test]
    fn streaming_masks_exactly_as_the_whole_text_would_be() {
        let secrets = ["tok3n", "hunter2", "a1", "zz-top-zz", "ok"];
        let m = mask(&secrets);
        let Some(automaton) = &m.automaton else {
            panic!("secrets make an automaton")
        };
        let alphabet = b"tok3nhunter2a1z-p\n ";
        for seed in 1..200 {
            let mut numbers = sequence(seed);
            let mut text = Vec::new();
            for _ in 0..300 {
                let n = numbers.next().unwrap_or(0);
                if n % 11 == 0 {
                    text.extend_from_slice(secrets[(n % 5) as usize].as_bytes());
                } else {
                    text.push(alphabet[(n % alphabet.len() as u64) as usize]);
                }
            }
            let sizes: Vec<usize> = numbers.take(8).map(|n| (n % 9) as usize + 1).collect();
            assert_eq!(
                streamed(&m, &text, &sizes),
                replace_all(automaton, &text),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn nothing_to_mask_passes_bytes_through() {
        let m = Arc::new(SecretMask::new(&["", ""]).expect("builds"));
        assert!(m.is_empty());
        assert_eq!(streamed(&m, b"a\nb", &[1]), b"a\nb");
        assert!(matches!(m.mask_line("abc"), Cow::Borrowed("abc")));
    }

    #[tokio::test]
    async fn a_reader_masks_a_secret_written_one_byte_at_a_time() {
        let m = mask(&["s3cr3t"]);
        let (mut writer, reader) = tokio::io::duplex(4);
        let writing = tokio::spawn(async move {
            for byte in b"pass=s3cr3t;\nnext s3c".iter().chain(b"r3t") {
                writer.write_all(&[*byte]).await?;
            }
            writer.shutdown().await
        });
        let mut masked = String::new();
        MaskingReader::new(reader, &m)
            .read_to_string(&mut masked)
            .await
            .expect("reads");
        writing.await.expect("joins").expect("writes");
        assert_eq!(masked, "pass=***;\nnext ***");
    }
}
