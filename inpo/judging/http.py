"""An LLM judge behind an OpenAI-compatible endpoint (a vLLM server, for instance).

Each pair becomes one /v1/completions request (max_tokens=1, the top 20 log-probs of the
next token) for the judge prompt (oracle.prompt_template, verdict.py: the same templates as
the in-process llm judge) showing the question and both responses. P(A > B) comes from the
probabilities of oracle.choices among the top log-probs (verdict.prob_from_choices; tokens
compared after stripping whitespace, so " A" counts as "A"); a choice missing from the top
list counts as probability 0; none there is an error. Their total is the verdict mass, a
lower bound here (the same token spelled otherwise counts nowhere). oracle.url is the API
base, e.g. http://127.0.0.1:8000/v1 ("/v1" is added to a URL with no path). Up to
oracle.batch_size requests are in flight at once; connection errors, timeouts, HTTP 429 and
5xx are retried oracle.retries times with exponential backoff.

In reasoning mode (oracle.reasoning_tokens = N > 0) each pair is one request for
oracle.verdict_samples completions (n) of up to N tokens, with the query's own seed
(verdict.verdict_seed; the server must honour `seed`, as vLLM's does), read as the llm
judge reads its samples (verdict.Verdicts.read_samples).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import requests
from requests.adapters import HTTPAdapter

from inpo.data import Prompt
from inpo.judging.oracle import Oracle, OracleError
from inpo.judging.verdict import (
    ReadsVerdicts,
    Verdicting,
    render_prompt,
    verdict_records,
    verdict_seed,
)

TOP_LOGPROBS = 20
BACKOFF_S = 0.5  # first retry waits this long, then twice as long each time


def api_base(url: str) -> str:
    base = url.rstrip("/")
    return base + "/v1" if urlparse(base).path == "" else base


def choice_probs(top: dict[str, float], choices: Sequence[str], where: str) -> list[float]:
    """Each choice's probability among one position's top log-probs; none there is an
    error naming the tokens that were."""
    mass = {c.strip(): 0.0 for c in choices}  # " A" and "A" are one verdict here
    for token, logprob in top.items():
        if token.strip() in mass:
            mass[token.strip()] += math.exp(float(logprob))
    if not any(mass.values()):
        raise OracleError(
            f"{where}: none of {list(choices)} is among the judge's top next tokens {list(top)}"
        )
    return list(mass.values())


def _connection_reason(e: requests.ConnectionError) -> str:
    """The OS-level reason ("connection refused") buried in a requests error, if any."""
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(e))
    return found.group(1).strip().lower() if found else f"{e}"[:200]


class HttpJudge(ReadsVerdicts, Oracle):
    position_biased = True

    def __init__(
        self,
        url: str,
        model: str | None = None,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        retries: int = 3,
        batch_size: int = 32,
        verdicting: Verdicting = Verdicting(),
    ):
        self.base = api_base(url)
        self.read_verdicts(verdicting, f"{self.base}/completions")
        self.timeout = timeout_s
        self.retries = retries
        key = os.environ.get(api_key_env) if api_key_env else None
        self.session = requests.Session()
        for scheme in ("http://", "https://"):  # one pooled connection per worker thread
            self.session.mount(scheme, HTTPAdapter(pool_maxsize=batch_size))
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"
        self.pool = ThreadPoolExecutor(max_workers=batch_size, thread_name_prefix="http-judge")
        self.model = model or self._first_model()

    def _request(self, method: str, path: str, body: dict | None = None) -> Any:
        """The JSON answer of the endpoint, retrying what may pass; OracleError otherwise."""
        url = self.base + path
        why = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
            try:
                r = self.session.request(method, url, json=body, timeout=self.timeout)
            except requests.Timeout:  # before ConnectionError: ConnectTimeout is both
                why = f"no answer within oracle.timeout_s = {self.timeout}s"
                continue
            except requests.ConnectionError as e:
                why = _connection_reason(e)
                continue
            if r.status_code == 429 or r.status_code >= 500:
                why = f"HTTP {r.status_code} {r.text[:200]!r}"
                continue
            if r.status_code >= 400:
                raise OracleError(f"{url} answered HTTP {r.status_code}: {r.text[:300]!r}")
            try:
                return r.json()
            except ValueError:
                raise OracleError(f"{url} answered non-JSON: {r.text[:200]!r}") from None
        raise OracleError(f"cannot reach {self.base} after {self.retries + 1} tries: {why}")

    def _first_model(self) -> str:
        data = self._request("GET", "/models")
        try:
            return str(data["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise OracleError(
                f"{self.base}/models answered {data!r:.200}, not a model list "
                "(set oracle.http_model)"
            ) from None

    def _judge_one(self, text: str) -> list[float]:
        """The choices' probabilities for one judge prompt."""
        body = {
            "model": self.model,
            "prompt": text,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": TOP_LOGPROBS,
        }
        data = self._request("POST", "/completions", body)
        where = f"{self.base}/completions"
        try:
            top = data["choices"][0]["logprobs"]["top_logprobs"][0]
            return choice_probs(dict(top), self.verdicting.choices, where)
        except (KeyError, IndexError, TypeError, ValueError):
            raise OracleError(
                f"{where} answered {data!r:.200}: no choices[0].logprobs.top_logprobs[0] "
                "of token -> log-prob"
            ) from None

    def _sample_one(self, text: str, seed: int) -> tuple[list[str], list[str]]:
        """Reasoning mode: the sampled completions' texts and finish reasons."""
        body = {
            "model": self.model,
            "prompt": text,
            "max_tokens": self.verdicting.reasoning_tokens,
            "temperature": self.verdicting.temperature,
            "n": self.verdicting.samples,
            "seed": seed,
        }
        data = self._request("POST", "/completions", body)
        try:
            got = sorted(data["choices"], key=lambda c: c.get("index", 0))
            texts = [str(c["text"]) for c in got]
            return texts, [str(c.get("finish_reason")) for c in got]
        except (KeyError, TypeError, AttributeError):
            raise OracleError(
                f"{self.base}/completions answered {data!r:.200}: no choices[].text"
            ) from None

    def prob(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> list[float]:
        texts = [
            render_prompt(self.verdicting.template, *t) for t in zip(prompts, a, b, strict=True)
        ]
        if not self.verdicting.reasoning_tokens:
            return [self.tally.read(probs) for probs in self.pool.map(self._judge_one, texts)]
        seeds = [verdict_seed(self.verdicting.seed, *t) for t in zip(prompts, a, b, strict=True)]
        answers = list(self.pool.map(self._sample_one, texts, seeds))
        keep = self.tally.kept is not None
        return self.tally.read_samples(
            [t for t, _ in answers],
            [r for _, r in answers],
            verdict_records(prompts, a, b, seeds) if keep else None,
        )

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.session.close()
