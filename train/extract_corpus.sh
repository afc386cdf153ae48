#!/usr/bin/env bash
# extract_corpus.sh - write the King James Bible (public domain) as plain text, one verse per line.
#
#   bash train/extract_corpus.sh [OUT]        (default OUT: .carry/kjv.txt under the repository root)
#
# Source: Debian's bible-kjv-text (the text, /usr/lib/bible.data, stored in the compressed format of
# the `bible` program) read through the `bible` program of bible-kjv. Both are installed with
#   apt-get install -y bible-kjv bible-kjv-text
# if missing (needs root and a package mirror). `bible -f` (pretty-printing toggled off) prints one
# verse per line as "Ge1:1 In the beginning ..."; the reference is stripped, leaving the verse text:
#   In the beginning God created the heaven and the earth.
# 31102 verses, Genesis 1:1 to Revelation 22:21, about 4.3 MB of ASCII, "\n" after every verse.
# The text itself is not committed; train/train.py takes this file with --corpus.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$(dirname "$here")/.carry/kjv.txt}"

if ! command -v bible >/dev/null 2>&1 || [ ! -e /usr/lib/bible.data ]; then
    echo "extract_corpus: 'bible' or /usr/lib/bible.data missing; installing bible-kjv bible-kjv-text" >&2
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y bible-kjv bible-kjv-text >&2 || { apt-get update >&2 && apt-get install -y bible-kjv bible-kjv-text >&2; }
    else
        sudo apt-get install -y bible-kjv bible-kjv-text >&2
    fi
fi
dpkg -L bible-kjv-text 2>/dev/null | grep -q 'bible.data$' || echo "extract_corpus: note: dpkg does not list bible.data" >&2

mkdir -p "$(dirname "$out")"
tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
# stdin from /dev/null: bible is interactive when no verse is given; here one range covers the book.
bible -f 'Gen1:1-Rev22:21' </dev/null >"$tmp"

# Every line must be "<Book><chapter>:<verse> <text>"; strip the reference.
bad="$(grep -cvE '^[1-3]?[A-Za-z]+[0-9]+:[0-9]+ ' "$tmp" || true)"
if [ "$bad" != 0 ]; then
    echo "extract_corpus: $bad line(s) without a verse reference; first:" >&2
    grep -vE '^[1-3]?[A-Za-z]+[0-9]+:[0-9]+ ' "$tmp" | head -3 >&2
    exit 1
fi
sed -E 's/^[1-3]?[A-Za-z]+[0-9]+:[0-9]+ //; s/[[:space:]]+$//' "$tmp" >"$out"

n="$(wc -l <"$out")"
first="$(head -1 "$out")"
last="$(tail -1 "$out")"
if [ "$n" != 31102 ]; then
    echo "extract_corpus: expected 31102 verses, got $n" >&2
    exit 1
fi
echo "extract_corpus: wrote $out: $n verses, $(wc -c <"$out") bytes"
echo "  first: $first"
echo "  last:  $last"
