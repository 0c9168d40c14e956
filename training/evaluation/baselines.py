"""Baseline recommenders, scored by the same loop as the two-tower model.

Every baseline is fitted on a :class:`~training.features.Prepared` of the *training* interactions, so its
users and items live in the same index space as the two-tower evaluation (user row ``u``, item row ``i`` =
vocabulary index - ``FIRST_TOKEN_INDEX``), and produces dense ``(batch, n_items)`` scores for any batch of
user rows. :func:`baseline_scores` adapts a fitted baseline to
:data:`training.evaluation.evaluate.ScoreBatches`, so :func:`training.evaluation.evaluate.rank_test_users`
ranks it exactly like the two-tower model (train items excluded, full ranking over the training items).

The collaborative baselines see the interactions as a *binary* user x item matrix: an item a user touched
several times (views, clicks, purchases) counts once. Only :class:`Popularity` counts every interaction.

* :class:`Popularity`: training interaction counts; the same list for everyone.
* :class:`EASE`: Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019: closed form
  ``B = I - P diagMat(1 / diag(P))`` with ``P = (X^T X + lambda I)^-1``, i.e. ``B_ij = -P_ij / P_jj`` off the
  diagonal and ``B_jj = 0``; scores ``X_u B``.
* :class:`IALS`: implicit-feedback ALS (Hu, Koren, Volinsky 2008) from the ``implicit`` package, CPU
  conjugate-gradient solver; scores ``x_u . y_i``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Protocol

import numpy as np
import numpy.typing as npt
import scipy.linalg
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from serving.model.features import FIRST_TOKEN_INDEX
from training.evaluation.evaluate import SCORE_BATCH, ScoreBatches, batched
from training.features import Prepared

__all__ = [
    "BASELINES",
    "EASE",
    "IALS",
    "Baseline",
    "Popularity",
    "baseline_scores",
    "gram_matrix",
    "interaction_matrix",
    "make_baseline",
    "spd_inverse",
]

log = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.floating[Any]]

_GRAM_BLOCK: Final = 2048  # item columns per block of the dense Gram matrix (bounds sparse temporaries)
_SYMMETRISE_BLOCK: Final = 2048  # rows per block when mirroring the inverse's triangle (bounds temporaries)


class Baseline(Protocol):
    """A recommender that can be fitted on training interactions and score users against every item."""

    name: ClassVar[str]

    def fit(self, train: Prepared) -> None:
        """Learn from every interaction of ``train`` (replacing anything learnt before)."""
        ...

    def score(self, user_rows: IntArray) -> FloatArray:
        """``(len(user_rows), train.n_items)`` finite scores, higher = better; may be a read-only view.

        Raises:
            RuntimeError: if called before :meth:`fit`.
        """
        ...

    def params(self) -> dict[str, Any]:
        """Hyper-parameters, for the experiment log."""
        ...


def interaction_matrix(train: Prepared, dtype: npt.DTypeLike = np.float32) -> sp.csr_matrix:
    """Binary ``(n_users, n_items)`` CSR matrix: 1 where the user interacted with the item at least once.

    Rows are user rows, columns item rows of ``train``; column indices are sorted within each row.
    """
    seq = train.sequences
    users = np.repeat(np.arange(train.n_users, dtype=np.int64), seq.lengths())
    items = seq.items - FIRST_TOKEN_INDEX
    matrix = sp.csr_matrix(
        (np.ones(len(items), dtype=dtype), (users, items)), shape=(train.n_users, train.n_items)
    )
    # COO -> CSR sums repeated (user, item) pairs; binarise them back to 1.
    matrix.sum_duplicates()
    matrix.data[:] = 1
    return matrix


def _not_fitted(name: str) -> RuntimeError:
    return RuntimeError(f"{name}: call fit() before score()")


@dataclass
class Popularity:
    """Every user gets the items with the most training interactions (repeats counted), ties by item row."""

    name: ClassVar[str] = "popularity"
    counts: npt.NDArray[np.float32] | None = field(default=None, init=False, repr=False)

    def fit(self, train: Prepared) -> None:
        self.counts = train.popularity.astype(np.float32)

    def score(self, user_rows: IntArray) -> FloatArray:
        if self.counts is None:
            raise _not_fitted(self.name)
        # One row broadcast to the batch: no copy (top_k_excluding masks a private copy anyway).
        return np.broadcast_to(self.counts, (len(user_rows), self.counts.shape[0]))

    def params(self) -> dict[str, Any]:
        return {}


@dataclass
class EASE:
    """EASE closed form on the binary interaction matrix.

    Memory is quadratic in the catalogue: the fit holds one dense ``(n_items, n_items)`` matrix of ``dtype``
    (built block by block, then inverted and turned into ``B`` in place) plus temporaries of at most
    ``n_items x 2048`` entries, so catalogues above ``max_items`` are refused before anything is allocated
    (30,000 items in float32 are 3.4 GiB).

    Attributes:
        l2: The ridge ``lambda`` added to the Gram matrix's diagonal (Steck's default range is 100-1000).
        dtype: Float type of the Gram matrix, its inverse and ``B``. float32 halves time and memory; with
            ``l2 = 500`` the eigenvalues of ``G + l2 I`` are >= 500, so the inverse loses few digits (on
            Amazon Beauty float32 and float64 gave the same NDCG@10 to 4 decimals, in 24 s vs 43 s).
            Use float64 for a small ``l2``.
        max_items: Largest catalogue accepted by :meth:`fit`.
        blas_threads: Cap on the BLAS threads of the inversion; None leaves the BLAS default (all cores,
            or ``OPENBLAS_NUM_THREADS``). On a machine shared with other busy processes a multi-threaded
            OpenBLAS spin-waits for its threads and the inversion can get several times *slower* than on
            one thread (measured: ~8x with 2 threads on 2 cores while another process used one).
    """

    name: ClassVar[str] = "ease"
    l2: float = 500.0
    dtype: type[np.floating[Any]] = np.float32
    max_items: int = 30_000
    blas_threads: int | None = None
    weights: FloatArray | None = field(default=None, init=False, repr=False)
    """``B``: ``(n_items, n_items)``, zero diagonal, C-contiguous."""
    user_items: sp.csr_matrix | None = field(default=None, init=False, repr=False)

    def fit(self, train: Prepared) -> None:
        """Compute ``B``. Raises ValueError above ``max_items`` items or for ``l2 <= 0``."""
        n_items = train.n_items
        if n_items > self.max_items:
            gib = n_items**2 * np.dtype(self.dtype).itemsize / 2**30
            raise ValueError(
                f"EASE: {n_items} items exceed max_items={self.max_items}; the dense item x item matrix "
                f"alone would need {gib:.1f} GiB. Use IALS, or raise max_items if the memory is there."
            )
        if self.l2 <= 0:
            raise ValueError(f"EASE: l2 must be > 0 (it makes X^T X invertible), got {self.l2}")
        x = interaction_matrix(train, self.dtype)
        gram = gram_matrix(x, self.dtype)
        gram[np.diag_indices(n_items)] += self.l2
        with threadpool_limits(limits=self.blas_threads, user_api="blas"):
            inverse = spd_inverse(gram)
        del gram  # overwritten by the inverse; drop the name so nothing uses it by mistake
        diagonal = inverse.diagonal().copy()
        # B_ij = -P_ij / P_jj: scale column j by -1 / P_jj, in place (no second n x n matrix).
        inverse /= -diagonal[None, :]
        inverse[np.diag_indices(n_items)] = 0.0
        self.weights = inverse
        self.user_items = x

    def score(self, user_rows: IntArray) -> FloatArray:
        if self.weights is None or self.user_items is None:
            raise _not_fitted(self.name)
        # Sparse rows times dense B: cost proportional to the users' interactions, not to n_items^2.
        scores: FloatArray = np.asarray(self.user_items[user_rows] @ self.weights)
        return scores

    def params(self) -> dict[str, Any]:
        return {"l2": self.l2, "dtype": np.dtype(self.dtype).name, "blas_threads": self.blas_threads}


def gram_matrix(x: sp.csr_matrix, dtype: type[np.floating[Any]]) -> FloatArray:
    """Dense ``X^T X``, one block of columns at a time.

    A single sparse product would hold every co-occurring item pair as a sparse entry (12+ bytes each,
    up to ``n_items^2`` of them on dense data) next to the dense result; blocks bound that to
    ``n_items x _GRAM_BLOCK`` entries.
    """
    n_items = x.shape[1]
    xt = x.T.tocsr()
    by_column = x.tocsc()
    gram = np.empty((n_items, n_items), dtype=dtype)
    for start in range(0, n_items, _GRAM_BLOCK):
        stop = min(start + _GRAM_BLOCK, n_items)
        gram[:, start:stop] = (xt @ by_column[:, start:stop]).toarray()
    return gram


def spd_inverse(matrix: FloatArray) -> FloatArray:
    """Inverse of a symmetric positive-definite matrix by Cholesky (``potrf`` + ``potri``), in place.

    Half the flops of an LU inverse. ``matrix`` is consumed: its memory holds the result (LAPACK works in
    Fortran order, and the transpose of a C-ordered symmetric matrix is the same matrix in Fortran order,
    so no copy is made). Returns a C-contiguous symmetric array.

    Raises:
        ValueError: if the matrix is not positive definite.
    """
    fortran = matrix.T  # same values (symmetric), Fortran-contiguous: LAPACK can overwrite it
    potrf, potri = scipy.linalg.get_lapack_funcs(("potrf", "potri"), (fortran,))
    factor, info = potrf(fortran, lower=False, clean=False, overwrite_a=True)
    if info != 0:
        raise ValueError(f"EASE: Gram matrix is not positive definite (potrf info={info})")
    inverse, info = potri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise ValueError(f"EASE: Gram matrix is singular (potri info={info})")
    # potri fills only the upper triangle; mirror it block by block into the lower one.
    n = inverse.shape[0]
    for start in range(0, n, _SYMMETRISE_BLOCK):
        stop = min(start + _SYMMETRISE_BLOCK, n)
        inverse[start:stop, :start] = inverse[:start, start:stop].T
        block = inverse[start:stop, start:stop]
        block[...] = np.triu(block) + np.triu(block, 1).T
    result: FloatArray = np.ascontiguousarray(inverse.T)  # symmetric: .T is the C-ordered view, no copy
    return result


@dataclass
class IALS:
    """Implicit ALS on the binary interaction matrix, via ``implicit.cpu.als.AlternatingLeastSquares``.

    ``implicit`` takes ``alpha * X`` as the confidence of the observed entries and 1 for the missing ones
    (checked against its ``recalculate_user``), so on a binary matrix ``alpha = 1`` weighs observed and
    missing entries equally: the model is then a ridge-regularised factorisation of the 0/1 matrix.
    The CPU model is used explicitly so results do not depend on whether a GPU build is installed.

    Attributes:
        factors, regularization, alpha, iterations: as in ``implicit``.
        seed: ``random_state`` of the factor initialisation; fits are reproducible for a seed.
        num_threads: ``implicit``'s own solver threads; 0 = all cores.
    """

    name: ClassVar[str] = "ials"
    factors: int = 32
    regularization: float = 10.0
    alpha: float = 1.0
    iterations: int = 15
    seed: int = 42
    num_threads: int = 0
    user_factors: npt.NDArray[np.float32] | None = field(default=None, init=False, repr=False)
    item_factors: npt.NDArray[np.float32] | None = field(default=None, init=False, repr=False)

    def fit(self, train: Prepared) -> None:
        from implicit.cpu.als import AlternatingLeastSquares

        # implicit parallelises over users itself; a multi-threaded BLAS underneath oversubscribes the
        # cores and can make fitting ~10x slower (implicit warns about it in utils.check_blas_config, which
        # runs in the constructor, hence the constructor inside the limit too).
        with threadpool_limits(limits=1, user_api="blas"):
            model = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=self.alpha,
                iterations=self.iterations,
                random_state=self.seed,
                num_threads=self.num_threads,
            )
            model.fit(interaction_matrix(train, np.float32), show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)

    def score(self, user_rows: IntArray) -> FloatArray:
        if self.user_factors is None or self.item_factors is None:
            raise _not_fitted(self.name)
        scores: FloatArray = self.user_factors[user_rows] @ self.item_factors.T
        return scores

    def params(self) -> dict[str, Any]:
        return {
            "factors": self.factors,
            "regularization": self.regularization,
            "alpha": self.alpha,
            "iterations": self.iterations,
            "seed": self.seed,
        }


BASELINES: Final[dict[str, Callable[[], Baseline]]] = {
    Popularity.name: Popularity,
    EASE.name: EASE,
    IALS.name: IALS,
}
"""Baseline name -> constructor with the default hyper-parameters."""


def make_baseline(name: str) -> Baseline:
    """A fresh, unfitted baseline by name. Raises ValueError for an unknown name."""
    try:
        return BASELINES[name]()
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}") from None


def baseline_scores(model: Baseline, batch_size: int = SCORE_BATCH) -> ScoreBatches:
    """Adapt a fitted baseline to :data:`~training.evaluation.evaluate.ScoreBatches` (batches of users)."""
    return batched(model.score, batch_size)
