//! Source files and positions: every diagnostic points into a [`SourceMap`].

use std::path::{Path, PathBuf};

/// Index of a file in a [`SourceMap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u32);

/// A byte range in one source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Span {
    pub file: FileId,
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(file: FileId, start: usize, end: usize) -> Self {
        // Files are limited to `MAX_FILE_BYTES`, far below `u32::MAX`.
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Span {
            file,
            start: clamp(start),
            end: clamp(end.max(start)),
        }
    }

    /// The smallest span covering both (which must be in the same file).
    pub fn to(self, other: Span) -> Span {
        Span {
            file: self.file,
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }

    pub fn len(self) -> usize {
        (self.end - self.start) as usize
    }

    pub fn is_empty(self) -> bool {
        self.end == self.start
    }

    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// A 1-based line and column (the column counts characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LineCol {
    pub line: usize,
    pub column: usize,
}

/// One loaded file: the path as the user should see it, and its text.
#[derive(Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
    line_starts: Vec<u32>,
    /// Per line: only ASCII, so columns are byte distances.
    ascii_lines: Vec<bool>,
}

impl SourceFile {
    pub fn new(path: PathBuf, text: String) -> Self {
        let mut line_starts = vec![0];
        let mut ascii_lines = Vec::new();
        let mut ascii = true;
        // Lines end as KDL says they do: CRLF, LF, CR, NEL, FF, LS, PS.
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            let newline_len = match b {
                b'\n' | 0x0C => 1,
                b'\r' => {
                    if bytes.get(i + 1) == Some(&b'\n') {
                        2
                    } else {
                        1
                    }
                }
                0xC2 if bytes.get(i + 1) == Some(&0x85) => 2,
                0xE2 if bytes.get(i + 1) == Some(&0x80)
                    && matches!(bytes.get(i + 2), Some(0xA8 | 0xA9)) =>
                {
                    3
                }
                _ => 0,
            };
            if newline_len > 0 {
                i += newline_len;
                line_starts.push(u32::try_from(i).unwrap_or(u32::MAX));
                ascii_lines.push(ascii);
                ascii = true;
                continue;
            }
            if b >= 0x80 {
                ascii = false;
            }
            i += 1;
        }
        ascii_lines.push(ascii);
        SourceFile {
            path,
            text,
            line_starts,
            ascii_lines,
        }
    }

    /// The line and column of a byte offset (constant time on ASCII lines).
    pub fn line_col(&self, offset: usize) -> LineCol {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&(offset as u32)) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line] as usize;
        let column = if self.ascii_lines[line] {
            offset - start
        } else {
            self.text
                .get(start..offset)
                .map_or(offset - start, |s| s.chars().count())
        } + 1;
        LineCol {
            line: line + 1,
            column,
        }
    }

    pub fn slice(&self, span: Span) -> &str {
        self.text.get(span.range()).unwrap_or("")
    }

    /// The length in bytes of the longest line from `context` lines before the one
    /// holding `start` to `context` lines after the one holding `end`.
    pub fn longest_line_near(&self, start: usize, end: usize, context: usize) -> usize {
        let line_of = |offset: usize| match self
            .line_starts
            .binary_search(&(offset.min(self.text.len()) as u32))
        {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let first = line_of(start).saturating_sub(context);
        let last = (line_of(end) + context).min(self.line_starts.len() - 1);
        (first..=last)
            .map(|l| {
                let from = self.line_starts[l] as usize;
                let to = self
                    .line_starts
                    .get(l + 1)
                    .map_or(self.text.len(), |&n| n as usize);
                to - from
            })
            .max()
            .unwrap_or(0)
    }
}

/// All files read while loading one pipeline (the main file and its includes).
#[derive(Debug, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    pub fn add(&mut self, path: PathBuf, text: String) -> FileId {
        let id = FileId(u32::try_from(self.files.len()).unwrap_or(u32::MAX));
        self.files.push(SourceFile::new(path, text));
        id
    }

    pub fn file(&self, id: FileId) -> &SourceFile {
        &self.files[id.0 as usize]
    }

    pub fn files(&self) -> impl Iterator<Item = (FileId, &SourceFile)> {
        self.files
            .iter()
            .enumerate()
            .map(|(i, f)| (FileId(i as u32), f))
    }

    pub fn find(&self, path: &Path) -> Option<FileId> {
        self.files().find(|(_, f)| f.path == path).map(|(id, _)| id)
    }

    pub fn slice(&self, span: Span) -> &str {
        self.file(span.file).slice(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_from_one() {
        let f = SourceFile::new("p.kdl".into(), "ab\nçd\n\nx".into());
        assert_eq!(f.line_col(0), LineCol { line: 1, column: 1 });
        assert_eq!(f.line_col(3), LineCol { line: 2, column: 1 });
        assert_eq!(f.line_col(5), LineCol { line: 2, column: 2 });
        assert_eq!(f.line_col(8), LineCol { line: 4, column: 1 });
        assert_eq!(f.line_col(100), LineCol { line: 4, column: 2 });
    }
}
