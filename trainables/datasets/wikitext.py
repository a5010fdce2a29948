"""WikiText-2 from its standard files: vocabulary, token ids, and batchify for truncated BPTT.

Layout under the data root (``TrialConfig.data_root``, else ``$CRITBATCH_DATA``, else
``~/.critbatch/data``), as the standard archives unpack:

- ``wikitext-2/wiki.{train,valid,test}.tokens`` (``wikitext-2-v1.zip``: tokenised, rare words
  already replaced by ``<unk>``; the variant every LSTM paper reports on), or
- ``wikitext-2-raw/wiki.{train,valid,test}.raw`` (``wikitext-2-raw-v1.zip``: raw text; a
  ``.tokens`` file in that folder is accepted too).

Tokenisation is the PyTorch ``word_language_model`` example's: every line (blank lines
included) is ``line.split()`` plus ``<eos>``, which gives 2,088,628 / 217,646 / 245,569
tokens for the standard train / valid / test files. The vocabulary comes from the training
file alone, ids in order of first appearance (33,278 words for ``wikitext-2``); words of the
other splits not in it map to ``<unk>`` (never the case for ``wikitext-2``, whose vocabulary
is closed; possible for the raw variant).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

EOS, UNK = "<eos>", "<unk>"
VARIANTS = {"wikitext-2": (".tokens",), "wikitext-2-raw": (".raw", ".tokens")}
SPLITS = ("train", "valid", "test")
# The archive moved off S3 in 2023; the first address is its current home.
URLS = {
    "wikitext-2": (
        "https://wikitext.smerity.com/wikitext-2-v1.zip",
        "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip",
    ),
    "wikitext-2-raw": (
        "https://wikitext.smerity.com/wikitext-2-raw-v1.zip",
        "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-raw-v1.zip",
    ),
}
TRAIN_TOKENS = 2_088_628  # tokens (with <eos>) of the standard wikitext-2 train file


def data_root(root: str = "") -> Path:
    """The dataset root: ``root`` if given, else ``$CRITBATCH_DATA``, else ``~/.critbatch/data``."""
    return Path(
        root or os.environ.get("CRITBATCH_DATA") or Path.home() / ".critbatch" / "data"
    ).expanduser()


def split_path(root: str | Path, split: str, variant: str = "wikitext-2") -> Path:
    """Path of one split's file; raises FileNotFoundError with how to get the data."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown WikiText variant {variant!r}; use one of {', '.join(VARIANTS)}")
    folder = Path(root) / variant
    tried = [folder / f"wiki.{split}{ext}" for ext in VARIANTS[variant]]
    for p in tried:
        if p.is_file():
            return p
    raise FileNotFoundError(
        f"WikiText-2 file not found: looked for {' or '.join(str(p) for p in tried)} "
        f"(data root {Path(root)}, from TrialConfig.data_root / the job's data.root, else "
        f"$CRITBATCH_DATA, else ~/.critbatch/data). Get it with `critbatch data download wikitext2` "
        f"on a machine with internet, or unpack {URLS[variant][0]} into {Path(root)}."
    )


def tokenize(path: Path) -> list[str]:
    """Words of a file, ``<eos>`` at the end of every line (as the PyTorch example)."""
    words: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            words.extend(line.split())
            words.append(EOS)
    return words


@dataclass(frozen=True)
class Corpus:
    """Token ids of the three splits (1-D int64 tensors) and the vocabulary (id -> word)."""

    vocab: tuple[str, ...]
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


def build_vocab(words: list[str]) -> dict[str, int]:
    """Word -> id in order of first appearance; ``<unk>`` appended if the text has none."""
    ids: dict[str, int] = {}
    for w in words:
        if w not in ids:
            ids[w] = len(ids)
    ids.setdefault(UNK, len(ids))
    return ids


def encode(words: list[str], ids: dict[str, int]) -> torch.Tensor:
    unk = ids[UNK]
    return torch.tensor([ids.get(w, unk) for w in words], dtype=torch.int64)


@functools.lru_cache(maxsize=2)
def _load(root: str, variant: str) -> Corpus:
    paths = {s: split_path(root, s, variant) for s in SPLITS}  # all present before any work
    train_words = tokenize(paths["train"])
    ids = build_vocab(train_words)
    return Corpus(
        vocab=tuple(ids),
        train=encode(train_words, ids),
        valid=encode(tokenize(paths["valid"]), ids),
        test=encode(tokenize(paths["test"]), ids),
    )


def load_corpus(root: str = "", variant: str = "wikitext-2") -> Corpus:
    """Read (once per process) WikiText-2 under :func:`data_root` ``(root)``."""
    return _load(str(data_root(root)), variant)


def batchify(tokens: torch.Tensor, n_streams: int) -> torch.Tensor:
    """Cut a token sequence into ``n_streams`` contiguous streams: shape (n_streams, length).

    Stream i holds tokens [i*L, (i+1)*L) with L = len(tokens) // n_streams; the tail that
    does not fill a whole column is dropped (as the PyTorch example, batch-first here).
    """
    length = tokens.numel() // n_streams
    if length < 2:
        raise ValueError(f"{tokens.numel()} tokens cannot make {n_streams} streams of >= 2 tokens")
    return tokens[: length * n_streams].view(n_streams, length)


def download(root: str | Path = "", variant: str = "wikitext-2") -> Path:
    """Download and unpack the standard archive into ``root`` (needs internet); returns the folder."""
    dest = data_root(str(root))
    dest.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in URLS[variant]:
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            archive = Path(tmp) / "wikitext.zip"
            try:
                with urllib.request.urlopen(url, timeout=60) as r, open(archive, "wb") as f:
                    shutil.copyfileobj(r, f)
                with zipfile.ZipFile(archive) as z:
                    z.extractall(dest)
            except (OSError, zipfile.BadZipFile) as e:
                errors.append(f"{url}: {e}")
                continue
        for s in SPLITS:
            split_path(dest, s, variant)  # raises if the archive did not hold the expected files
        return dest / variant
    raise RuntimeError(f"could not download WikiText-2 ({'; '.join(errors)})")
