"""The two-view encoder's semantic view: a student distilled from the teacher.

`DistilledStudent` (the teacher's token vocabulary distilled by Model2Vec, attention pooling by
token salience, a linear head) reads a document's whole text as a bag of the teacher's tokens,
so it costs a fraction of the teacher and reads long documents past the teacher's window. Its
head starts from the ridge regression of the teacher's embeddings on the initial pooled
vectors, then token vectors, salience and head are fitted (early-stopped) to the teacher's
embeddings of a sample.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from udl.config import EncoderConfig
from udl.encoders.base import in_row_blocks, seed_everything
from udl.encoders.modules import DistilledStudent
from udl.encoders.teacher import DistilledVocabulary
from udl.encoders.training import TrainingResult, autocast, epoch_budget, train
from udl.encoders.views import single_threaded_blas, unit_rows

__all__ = ["SemanticView", "TokenBatch", "WholeTextTokenizer", "single_threaded"]

# Documents pooled at a time by `SemanticView.embed`.
POOL_CHUNK = 4096


@contextmanager
def single_threaded() -> Iterator[None]:
    """Torch and BLAS on one thread, for the same reason as `single_threaded_blas`: the
    student's kernels summed in another order when the run resumed in a fresh process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with single_threaded_blas():
            yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class TokenBatch:
    """Known token ids of many documents, CSR-style (document i is ids[offsets[i]:offsets[i+1]])."""

    ids: NDArray[np.int64]
    offsets: NDArray[np.int64]

    def take(self, rows: NDArray[np.int64]) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat ids and offsets (len(rows) + 1,) of `rows`, as torch tensors."""
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        lengths = ends - starts
        ids = (
            np.concatenate([self.ids[s:e] for s, e in zip(starts, ends, strict=True)])
            if lengths.sum()
            else np.zeros(0, np.int64)
        )
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return torch.from_numpy(ids), torch.from_numpy(offsets)


class WholeTextTokenizer:
    """The teacher's `tokenizers` tokenizer without truncation or padding, dropping [UNK]."""

    def __init__(self, tokenizer_json: str) -> None:
        from tokenizers import Tokenizer

        self.tokenizer_json = tokenizer_json
        self._tokenizer = Tokenizer.from_str(tokenizer_json)
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

    def __call__(self, texts: list[str]) -> TokenBatch:
        """Known token ids of every text, whole; unknown pieces are dropped."""
        unknown = self._tokenizer.token_to_id("[UNK]")
        encodings = self._tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        # One flat array for the batch, not an array per document (a fifth of the time).
        lists = [e.ids for e in encodings]
        lengths = np.fromiter(map(len, lists), np.int64, len(lists))
        flat = np.fromiter(itertools.chain.from_iterable(lists), np.int64, int(lengths.sum()))
        if unknown is not None:
            known = flat != unknown
            owner = np.repeat(np.arange(len(lists)), lengths)
            flat, lengths = flat[known], np.bincount(owner[known], minlength=len(lists))
        return TokenBatch(flat, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


class SemanticView:
    """The fitted student and the tokenizer whose ids it reads.

    Attributes:
        student: the `DistilledStudent`.
        tokenize: its `WholeTextTokenizer`.
        dim: width of the view (the teacher's).
    """

    def __init__(self, student: DistilledStudent, tokenize: WholeTextTokenizer) -> None:
        self.student, self.tokenize, self.dim = student, tokenize, student.dim

    @classmethod
    def fit(
        cls,
        vocabulary: DistilledVocabulary,
        texts: tuple[list[str], list[str]],
        targets: tuple[torch.Tensor, torch.Tensor],
        config: EncoderConfig,
        seed: int,
        device: torch.device,
    ) -> tuple[SemanticView, TrainingResult]:
        """Fit a student to the teacher's embeddings `targets` of the (training, validation)
        `texts`, on one thread; the validation loss stops training early."""
        (train_texts, valid_texts), (train_targets, valid_targets) = texts, targets
        tokenize = WholeTextTokenizer(vocabulary.tokenizer_json)
        with single_threaded():
            tokens, valid_tokens = tokenize(train_texts), tokenize(valid_texts)
            generator = seed_everything(seed)
            vectors = torch.from_numpy(vocabulary.vectors)
            student = DistilledStudent(len(vectors), vectors.shape[1], train_targets.shape[1])
            with torch.no_grad():
                student.tokens.weight.copy_(vectors)
                student.head.weight.copy_(_least_squares_head(student, tokens, train_targets))
            student.head.bias.data.zero_()
            student.to(device)

            def loss(
                batch: TokenBatch, target: torch.Tensor, rows: NDArray[np.int64]
            ) -> torch.Tensor:
                ids, offsets = batch.take(rows)
                output = student(ids.to(device), offsets.to(device))
                return 1.0 - F.cosine_similarity(output.float(), target[rows].to(device), dim=1)

            result = train(
                student,
                lambda rows: loss(tokens, train_targets, rows),
                lambda rows: loss(valid_tokens, valid_targets, rows),
                len(train_texts),
                len(valid_texts),
                epochs=epoch_budget(config.epochs, len(train_texts), config.max_doc_epochs),
                batch_size=config.two_view.batch_size,
                learning_rate=config.two_view.learning_rate,
                patience=config.patience,
                generator=generator,
                device=device,
                desc="two_view student",
            )
        return cls(student, tokenize), result

    @torch.no_grad()
    def embed(self, tokens: TokenBatch) -> NDArray[np.float32]:
        """Unit student vectors (n, dim) of tokenised documents; zero for one without tokens."""
        self.student.eval()
        device = self.student.head.weight.device
        n = len(tokens.offsets) - 1
        out = np.empty((n, self.dim), np.float32)
        for start in range(0, n, POOL_CHUNK):
            stop = min(start + POOL_CHUNK, n)
            ids, offsets = tokens.take(np.arange(start, stop))
            with autocast(device):
                pooled = self.student.pool(ids.to(device), offsets.to(device))
                out[start:stop] = in_row_blocks(
                    lambda block: self.student.head(block).float().cpu().numpy(), pooled
                )
        return unit_rows(out)


def _least_squares_head(
    student: DistilledStudent, tokens: TokenBatch, targets: torch.Tensor
) -> torch.Tensor:
    """Head weights (dim, token_dim) mapping the initial pooled vectors to the teacher's
    embeddings by ridge regression: training starts from the distilled model's best linear
    reading instead of a random projection. The ridge (a tenth of the mean feature variance)
    keeps a sample smaller than the token width from being interpolated."""
    pooled = student.pool(*tokens.take(np.arange(len(tokens.offsets) - 1))).double()
    gram = pooled.T @ pooled
    ridge = 0.1 * torch.trace(gram) / gram.shape[0]
    solution = torch.linalg.solve(
        gram + ridge * torch.eye(gram.shape[0]), pooled.T @ targets.double()
    )
    return solution.T.float()
