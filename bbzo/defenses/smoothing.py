"""Randomized smoothing of a black-box classifier (Cohen et al. 2019): PREDICT and CERTIFY.

The smoothed classifier g(x) = argmax_c P(f(pre(x + δ)) = c), δ ~ N(0, σ²I), where f is a
classifier reached only through a ``QueryLayer`` and ``pre`` an optional local, white-box
stage (a denoiser, an encoder + decoder) applied before the query.

Noise is drawn in fixed blocks of ``NOISE_BLOCK`` samples, each from its own torch generator
seeded by (seed, image index, phase, block); each block of noisy inputs is one dense
``classify`` request (inputs (k, C, H, W), answered with probabilities (k, classes)), so the
ledger holds one row per block. Without a ``preprocess`` stage a block's inputs are a
deterministic function of (image bytes, σ, seed, index, phase, block, k, the noise source), so
its request is keyed by that recipe (``block_recipe``, ``Request.recipe``) and no hash runs
over the inputs; with one, by the inputs' bytes.

The black box is kept busy: a submit's noise is drawn and its requests built (and preprocessed)
on a worker thread while earlier submits are in flight, and the black box gets the next
submit before the answers of the last one are recorded (``PIPELINE_DEPTH``); submits ramp up
from ``FIRST_SUBMIT`` rows so that the first inputs go out early. On 2 cores this certifies
13–16 % faster than one submit at a time with the next one prepared meanwhile. The inputs are
the same as drawn in series.

Every noisy input counts as one query (a block of k inputs is k ``Request.queries``): the
layer's query budget is checked before a submit against the blocks the ledger cannot answer
(``all_or_nothing``), and ``sent``/``cached`` count inputs. Blocks go out at most ``ceil(batch
/ NOISE_BLOCK)`` per submit (never n copies in memory); the requests, hence the counts and the
certificate, do not depend on the batch size, on the order of the images, or on a resume (a
resumed image sends the same blocks, the completed ones answered by the ledger).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.stats import beta, binomtest, norm

from bbzo.blackbox.budget import Budget
from bbzo.blackbox.protocol import Request, Response, canonical_json
from bbzo.blackbox.query.layer import QueryLayer, run_blocking
from bbzo.errors import InputError, TargetError
from bbzo.runs.settings import check_fields

NOISE_BLOCK = 512  # noisy inputs per generator and per request
FIRST_SUBMIT = 2 * NOISE_BLOCK  # the most rows of the first submit of a ``_tallies`` call
RAMP = 4  # each next submit has at most RAMP× the rows of the one before (up to the batch)
PIPELINE_DEPTH = 2  # submits in flight at once (the layer's ``concurrency`` still caps calls)
SELECT, ESTIMATE = 0, 1  # noise phases: CERTIFY's selection draws (n0), estimation draws (n)
# What draws the noise, in every recipe key: another torch may draw other values.
NOISE_SOURCE = f"torch {torch.__version__} CPU generator, randn float32"
Preprocess = Callable[[torch.Tensor], torch.Tensor]


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or not math.isfinite(value):
        raise InputError(f"{name} must be a positive number, got {value!r}")


def _count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class SmoothingSettings:
    """How the smoothed classifier is sampled.

    Attributes:
        sigma: standard deviation of the Gaussian noise (image units, [0, 1] pixels).
        n0: selection samples of CERTIFY (the guess of the top class).
        n: estimation samples (CERTIFY) or samples (PREDICT).
        alpha: failure probability of the certificate / of PREDICT's test, in (0, 1).
        batch: noisy inputs per query-layer submit (rounded up to whole noise blocks).
    """

    sigma: float = 0.25
    n0: int = 100
    n: int = 10_000
    alpha: float = 0.001
    batch: int = 4096

    def __post_init__(self) -> None:
        def alpha() -> None:
            if not isinstance(self.alpha, (int, float)) or not 0 < self.alpha < 1:
                raise InputError(f"alpha must be in (0, 1), got {self.alpha!r}")

        def n0() -> None:
            _count("n0", self.n0)
            if isinstance(self.n, int) and self.n0 > self.n:
                raise InputError(f"n0 must be at most n ({self.n}), got {self.n0}; lower --n0 "
                                 f"or raise --n")

        check_fields([("sigma", lambda: _positive("sigma", self.sigma)),
                      ("n", lambda: _count("n", self.n)), ("n0", n0), ("alpha", alpha),
                      ("batch", lambda: _count("batch", self.batch))])

    def to_dict(self) -> dict:
        return asdict(self)


def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided (1 − alpha) Clopper–Pearson lower bound on p from k successes in n trials."""
    return 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))


def max_certifiable_radius(n: int, alpha: float, sigma: float) -> float:
    """The largest radius CERTIFY can give with n samples: all correct, p̲ = alpha^(1/n)."""
    return float(sigma * norm.ppf(alpha ** (1.0 / n)))


def block_seed(seed: int, index: int, phase: int, block: int) -> int:
    """The 64-bit seed of one noise block, mixed from its coordinates (numpy SeedSequence)."""
    state = np.random.SeedSequence([seed, index, phase, block]).generate_state(1, np.uint64)
    return int(state[0])


def _draw(seed: int, index: int, phase: int, block: int, out: torch.Tensor) -> torch.Tensor:
    """Standard normal noise of one whole block into ``out`` (``NOISE_BLOCK``, *shape)."""
    generator = torch.Generator().manual_seed(block_seed(seed, index, phase, block))
    return torch.randn(out.shape, generator=generator, out=out)


def noise(seed: int, index: int, phase: int, start: int, stop: int, shape: tuple[int, ...],
          sigma: float) -> np.ndarray:
    """Noise samples ``start..stop`` (float32, (stop − start, *shape)) of image ``index``:
    the same values whatever slices they are asked in (whole blocks are always drawn)."""
    first, last = start // NOISE_BLOCK, (stop - 1) // NOISE_BLOCK
    out = torch.empty((last - first + 1) * NOISE_BLOCK, *shape)
    for b in range(first, last + 1):
        lo = (b - first) * NOISE_BLOCK
        _draw(seed, index, phase, b, out[lo:lo + NOISE_BLOCK])
    offset = first * NOISE_BLOCK
    return _scaled(out[start - offset:stop - offset].numpy(), sigma)


def _scaled(noise: np.ndarray, sigma: float) -> np.ndarray:
    """``noise`` (float32) times σ in place, as torch's ``mul_(sigma)`` rounds it (numpy: no
    torch thread pool on a worker thread)."""
    return np.multiply(noise, np.float32(sigma), out=noise)


def image_digest(x: np.ndarray) -> bytes:
    """sha256 of an image's dtype, shape and bytes (C order)."""
    x = np.ascontiguousarray(x)
    head = canonical_json({"dtype": x.dtype.str, "shape": list(x.shape)}).encode()
    return hashlib.sha256(head + b"\0" + x.tobytes()).digest()


def block_recipe(image: bytes, sigma: float, seed: int, index: int, phase: int, block: int,
                 rows: int) -> bytes:
    """The ``Request.recipe`` of a block's noisy inputs: its first ``rows`` noise samples
    (``noise``) times ``sigma`` plus the image of digest ``image`` (``image_digest``)."""
    return canonical_json({"noise": NOISE_SOURCE, "block_size": NOISE_BLOCK,
                           "image": image.hex(), "sigma": float(sigma), "seed": int(seed),
                           "index": int(index), "phase": int(phase), "block": int(block),
                           "rows": int(rows)}).encode()


def _sum_counts(parts: list[np.ndarray]) -> np.ndarray:
    """The sum of class counts of different lengths (int64, as long as the longest)."""
    out = np.zeros(max(len(part) for part in parts), dtype=np.int64)
    for part in parts:
        out[:len(part)] += part
    return out


@dataclass
class Certificate:
    """CERTIFY's answer for one image: ``prediction`` None when it abstains (radius 0)."""

    prediction: int | None
    radius: float
    top_count: int
    queries: int


class SmoothedClassifier:
    """g = smoothed(f ∘ pre) over a query layer (module doc).

    Args:
        layer: the query layer of the black-box classifier f.
        settings: ``SmoothingSettings``.
        preprocess: local stage applied to noisy inputs (n, C, H, W) → (n, C', H', W')
            before the query; None sends the noisy inputs themselves.
        seed: seeds the noise (with the image index).

    The most noisy inputs sent to the black box is the layer's query budget (ledger answers
    are free): ``QueryLayer(target, ledger=..., budget=max_queries)``.

    Attributes:
        sent: noisy inputs the black box classified through the layer since this object was
            made (``layer.stats.queries``).
        cached: noisy inputs answered free in that time (``layer.stats.cached_queries``).
    """

    def __init__(self, layer: QueryLayer, settings: SmoothingSettings, *,
                 preprocess: Preprocess | None = None, seed: int = 0) -> None:
        if not isinstance(layer, QueryLayer):
            raise InputError(f"layer must be a QueryLayer, got {type(layer).__name__}")
        self.layer = layer
        self.settings = settings
        self.preprocess = preprocess
        self.seed = int(seed)
        self._start = (layer.stats.queries, layer.stats.cached_queries)

    @property
    def budget(self) -> Budget:
        """The layer's budget (its queries are noisy inputs)."""
        return self.layer.budget

    @property
    def sent(self) -> int:
        return self.layer.stats.queries - self._start[0]

    @property
    def cached(self) -> int:
        return self.layer.stats.cached_queries - self._start[1]

    def classify(self, inputs: np.ndarray) -> np.ndarray:
        """Top classes (n,) of the black box for inputs (n, C, H, W): one dense request per
        ``NOISE_BLOCK`` rows (keyed by their bytes), sent in one submit, refused whole
        (``BudgetExceeded``, nothing sent) when the layer's budget cannot cover the inputs the
        ledger cannot answer."""
        requests = self._byte_requests(inputs)
        return self._top_classes(requests, self.layer.submit(requests, all_or_nothing=True))

    def _byte_requests(self, inputs: np.ndarray) -> list[Request]:
        """One request per ``NOISE_BLOCK`` rows of ``preprocess(inputs)``, keyed by bytes."""
        if self.preprocess is not None:
            with torch.no_grad():
                inputs = self.preprocess(torch.from_numpy(inputs)).numpy()
        return [Request("classify", {"inputs": inputs[i:i + NOISE_BLOCK]})
                for i in range(0, len(inputs), NOISE_BLOCK)]

    def _top_classes(self, requests: list[Request], responses: list[Response]) -> np.ndarray:
        """Top classes of the inputs of ``requests`` (in order) from the layer's ``responses``."""
        try:
            probs = np.concatenate([np.asarray(r.output["probs"], dtype=np.float64)
                                    for r in responses])
        except (KeyError, TypeError, ValueError):
            raise TargetError(f"{self.layer.target.id} answered without a 'probs' table; "
                              f"smoothing needs a classifier returning class probabilities") \
                from None
        rows = sum(request.queries for request in requests)
        if probs.ndim != 2 or len(probs) != rows:
            raise TargetError(f"{self.layer.target.id} answered probabilities of shape "
                              f"{probs.shape} for {rows} inputs")
        return probs.argmax(axis=1)

    def _noisy(self, x: np.ndarray, index: int, phase: int, start: int,
               stop: int) -> np.ndarray:
        """Noisy copies ``start..stop`` of x (C, H, W): x + σ·noise (float32)."""
        inputs = noise(self.seed, index, phase, start, stop, x.shape, self.settings.sigma)
        inputs += x
        return inputs

    def _recipe_requests(self, x: np.ndarray, image: bytes, index: int, phase: int,
                         start: int, stop: int, stack: np.ndarray) -> list[Request]:
        """The requests of noisy copies ``start..stop`` of x (``start`` on a block boundary),
        one per block, keyed by their recipe; the same inputs as ``_noisy``. ``stack``: float32
        scratch (≥ stop − start rounded up to whole blocks, *x.shape), overwritten (requests
        copy their rows)."""
        sigma, rows = self.settings.sigma, stop - start
        for lo in range(0, rows, NOISE_BLOCK):  # block by block, while it is in cache
            _draw(self.seed, index, phase, (start + lo) // NOISE_BLOCK,
                  torch.from_numpy(stack[lo:lo + NOISE_BLOCK]))
            block = _scaled(stack[lo:min(rows, lo + NOISE_BLOCK)], sigma)
            block += x
        inputs = stack[:rows]
        recipes = [block_recipe(image, sigma, self.seed, index, phase, (start + lo) // NOISE_BLOCK,
                                min(rows - lo, NOISE_BLOCK)) for lo in range(0, rows, NOISE_BLOCK)]
        full = rows // NOISE_BLOCK
        requests = [] if not full else Request.dense_batch(
            "classify", "inputs", inputs[:full * NOISE_BLOCK].reshape(full, NOISE_BLOCK, *x.shape),
            recipes=recipes[:full])
        if rows > full * NOISE_BLOCK:
            requests.append(Request("classify", {"inputs": inputs[full * NOISE_BLOCK:]},
                                    recipe=recipes[-1]))
        return requests

    def counts(self, x: np.ndarray, index: int, phase: int, num: int) -> np.ndarray:
        """Class counts of the black box over ``num`` noisy copies of x (C, H, W)."""
        return self._tallies(x, index, [(phase, num)])[0]

    def _submits(self, draws: Sequence[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
        """(draw, phase, start, stop) of each submit for ``draws`` ((phase, num) each): up to
        ``batch`` rows (whole blocks) per submit, ramping up from ``FIRST_SUBMIT`` rows by
        ``RAMP``× so that the first inputs reach the black box early and each submit's inputs
        are ready before the black box is done with the previous ones."""
        step = NOISE_BLOCK * -(-self.settings.batch // NOISE_BLOCK)
        work, last = [], 0
        for i, (phase, num) in enumerate(draws):
            start = 0
            while start < num:
                stop = min(num, start + min(step, max(FIRST_SUBMIT, RAMP * last)))
                work.append((i, phase, start, stop))
                start, last = stop, stop - start
        return work

    def _tallies(self, x: np.ndarray, index: int,
                 draws: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """``counts`` for each (phase, num) of ``draws``, in order (``_pipeline``)."""
        x = np.asarray(x, dtype=np.float32)
        work = self._submits(draws)
        if self.preprocess is None:
            image = image_digest(x)
            stack = np.empty((max(stop - start for *_, start, stop in work), *x.shape),
                             dtype=np.float32)  # reused by every submit

            def prepare(phase: int, start: int, stop: int) -> list[Request]:
                return self._recipe_requests(x, image, index, phase, start, stop, stack)
        else:
            def prepare(phase: int, start: int, stop: int) -> list[Request]:
                return self._byte_requests(self._noisy(x, index, phase, start, stop))
        found = run_blocking(lambda: self._pipeline(work, prepare))
        return [_sum_counts([found[k] for k, item in enumerate(work) if item[0] == i])
                for i in range(len(draws))]

    async def _pipeline(self, work: list[tuple[int, int, int, int]],
                        prepare: Callable[[int, int, int], list[Request]]) -> list[np.ndarray]:
        """Class counts of each submit of ``work``. The requests of each submit are prepared
        on a worker thread (``prepare``: torch's ``randn`` and numpy release the GIL) while the
        previous ones are in flight, and sent while the one before is still answered
        (``PIPELINE_DEPTH`` submits in flight), so the black box never waits for the answers of
        one submit to be recorded before the next. On a failure the submits in flight are
        cancelled (their sends finish and are recorded) and the first error is raised."""
        loop = asyncio.get_running_loop()

        async def answer(requests: list[Request]) -> np.ndarray:
            responses = await self.layer.asubmit(requests, all_or_nothing=True)
            return np.bincount(self._top_classes(requests, responses))

        flights: collections.deque[asyncio.Task] = collections.deque()
        found: list[np.ndarray] = []
        try:
            with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bbzo-noise") \
                    as pool:
                for _, *where in work:
                    requests = await loop.run_in_executor(pool, prepare, *where)
                    if len(flights) == PIPELINE_DEPTH:
                        found.append(await flights.popleft())
                    flights.append(asyncio.ensure_future(answer(requests)))
            while flights:
                found.append(await flights.popleft())
        finally:
            for flight in flights:
                flight.cancel()
            await asyncio.gather(*flights, return_exceptions=True)
        return found

    def certify(self, x: np.ndarray, index: int) -> Certificate:
        """Cohen's CERTIFY: guess ĉ from n0 draws, bound P(ĉ) from n more; radius
        σ·Φ⁻¹(p̲) when p̲ > 1/2, else abstain."""
        s = self.settings
        selection, counts = self._tallies(x, index, [(SELECT, s.n0), (ESTIMATE, s.n)])
        guess = int(selection.argmax())
        top = int(counts[guess]) if guess < len(counts) else 0
        p_low = lower_confidence_bound(top, s.n, s.alpha)
        if p_low <= 0.5:
            return Certificate(None, 0.0, top, s.n0 + s.n)
        return Certificate(guess, float(s.sigma * norm.ppf(p_low)), top, s.n0 + s.n)

    def predict(self, x: np.ndarray, index: int) -> Certificate:
        """Cohen's PREDICT: the top class of n draws unless a two-sided binomial test between
        the top two counts is not significant at alpha (abstain); radius is 0."""
        counts = self.counts(x, index, ESTIMATE, self.settings.n)
        order = np.argsort(-counts, kind="stable")
        top = int(counts[order[0]])
        second = int(counts[order[1]]) if len(order) > 1 else 0
        if binomtest(top, top + second, 0.5).pvalue > self.settings.alpha:
            return Certificate(None, 0.0, top, self.settings.n)
        return Certificate(int(order[0]), 0.0, top, self.settings.n)
