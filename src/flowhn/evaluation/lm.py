"""lm-eval adapter for any FlowHN-lab causal LM (``model(input_ids) -> logits``).

Context/continuation splitting, empty-context handling and the rolling windows come from lm-eval
itself (``TemplateLM`` and ``lm_eval.utils``); this class only turns token lists into log-probs.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from flowhn.errors import ConfigError
from flowhn.perf.hardware import normalize_dtype

PadTo = Literal["auto", "longest", "max_length"]


@register_model("flowhn")
class FlowHNLM(TemplateLM):
    """Scores loglikelihood requests with a FlowHN-lab model.

    Args:
        model: ``model(input_ids (B, T)) -> logits (B, T, vocab)``, causal.
        tokenizer: a ``PreTrainedTokenizerFast`` with an EOS token.
        max_length: longest input the model sees (its training ``data.seq_len``); longer requests are
            truncated from the left, as lm-eval's HF backend does.
        batch_size: requests per forward pass.
        device: where the model runs; default: where its parameters are.
        pad_to: "longest" right-pads each batch to its longest row; "max_length" pads every row to
            ``max_length``. Token-split models route a position by its place in the *whole* padded
            sequence, so their scores would depend on which requests share a batch; "auto" picks
            "max_length" for them (``model.split_ratio`` is not None), matching the fixed training
            length, and for a compiled model (``model.compile_scope`` set): one input shape, one
            compile (a width per batch compiled ~23 s each for a 135M model on an H200); "longest"
            otherwise.
        add_bos_token: prepend BOS to every context, if the model was trained with BOS-led documents.
        precision: Lightning-style precision of the forward pass; "bf16-mixed"/"16-mixed" run it
            under autocast (log-softmax stays fp32), anything 32-bit runs as is.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, *, max_length: int, batch_size: int = 16,
                 device: str | torch.device | None = None, pad_to: PadTo = "auto", add_bos_token: bool = False,
                 precision: str = "32-true"):
        super().__init__()
        if not isinstance(max_length, int) or max_length < 2:
            raise ConfigError(f"eval.max_length: must be an integer >= 2, got {max_length!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"eval.batch_size: must be an integer >= 1, got {batch_size!r}")
        if pad_to not in ("auto", "longest", "max_length"):
            raise ConfigError(f"pad_to: must be 'auto', 'longest' or 'max_length', got {pad_to!r}")
        if tokenizer.eos_token_id is None:
            raise ConfigError("tokenizer: has no EOS token; lm-eval needs one as the empty-context prefix")
        if add_bos_token and tokenizer.bos_token_id is None:
            raise ConfigError("eval.add_bos_token: true, but the tokenizer has no BOS token")
        if device is None:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self._device = torch.device(device)
        self.model = model.to(self._device).eval()
        self.tokenizer = tokenizer
        self._max_length = max_length
        self._batch_size = batch_size
        if pad_to == "auto":
            position_dependent = getattr(model, "split_ratio", None) is not None
            compiled = getattr(model, "compile_scope", None) is not None
            pad_to = "max_length" if position_dependent or compiled else "longest"
        self.pad_to = pad_to
        self.add_bos_token = add_bos_token
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        try:
            dtype = normalize_dtype(precision)
        except ValueError as err:
            raise ConfigError(f"eval.precision: {err}") from None
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)

    # ------------------------------------------------------------------ TemplateLM interface
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        # Conditions a continuation whose context is empty; BOS if the model has one, like HFLM.
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "flowhn")).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        # Special tokens are added here, not by the tokenizer's post-processor, so BOS appears
        # exactly when asked whatever template the tokenizer was saved with.
        ids = self.tokenizer.encode(string, add_special_tokens=False)
        with_bos = self.add_bos_token if add_special_tokens is None else add_special_tokens
        if with_bos and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id] + ids
        return ids

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """``requests``: ``(cache_key, context_tokens, continuation_tokens)``; returns ``(logprob, is_greedy)``."""
        # Longest first: batches hold similar lengths and an out-of-memory shows up at once.
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for start in tqdm(range(0, len(order), self.batch_size), disable=disable_tqdm or self.rank != 0,
                          desc="flowhn loglikelihood"):
            chunk = order[start:start + self.batch_size]
            scored = self._score_batch([(requests[i][1], requests[i][2]) for i in chunk])
            for i, answer in zip(chunk, scored):
                results[i] = answer
                key = requests[i][0]
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, answer)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts in windows of ``max_length`` (each token scored once)."""
        pairs, owner = [], []
        for n, (text,) in enumerate(req.args for req in requests):
            windows = lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(text, add_special_tokens=False), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)
            for context, continuation in map(lm_utils.make_disjoint_window, windows):
                pairs.append((None, context, continuation))
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (logprob, _) in zip(owner, self._loglikelihood_tokens(pairs, disable_tqdm=disable_tqdm)):
            totals[n] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        raise NotImplementedError(
            "FlowHNLM scores log-likelihoods only; generative lm-eval tasks (output_type generate_until) "
            "are not supported. The paper's six tasks are all multiple choice.")

    # ------------------------------------------------------------------ scoring
    # inference_mode, as Lightning's validation loop: a compiled model's graph guards on it, so
    # no_grad here would compile the eval graph a second time.
    @torch.inference_mode()
    def _score_batch(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        rows, spans = [], []
        for context, continuation in pairs:
            if not continuation or len(continuation) > self.max_length:
                raise ValueError(f"a continuation of {len(continuation)} tokens cannot be scored with "
                                 f"max_length={self.max_length}")
            # The last token is only ever a target; keep at most max_length inputs, cut on the left.
            row = (context + continuation)[-(self.max_length + 1):][:-1]
            rows.append(row)
            spans.append((len(row) - len(continuation), continuation))
        # "max_length": one input shape for every batch, the last one too (padded with rows of padding),
        # so a compiled model compiles once (validation's eval graph, at the training batch size)
        # instead of again, dynamic, for the last batch of each task. Rows are independent: a padding
        # row changes no other row's scores.
        fixed = self.pad_to == "max_length"
        width = self.max_length if fixed else max(map(len, rows))
        input_ids = torch.full((self.batch_size if fixed else len(rows), width), self.pad_token_id, dtype=torch.long)
        for b, row in enumerate(rows):
            input_ids[b, :len(row)] = torch.tensor(row, dtype=torch.long)
        with torch.autocast(self._device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            logits = self.model(input_ids.to(self._device))
        logprobs = F.log_softmax(logits.float(), dim=-1)

        out = []
        for b, (first, continuation) in enumerate(spans):
            # Position t predicts token t+1, so the continuation is read from `first` onward.
            window = logprobs[b, first:first + len(continuation)]
            target = torch.tensor(continuation, dtype=torch.long, device=window.device)
            logprob = window.gather(-1, target[:, None]).sum()
            greedy = bool((window.argmax(-1) == target).all())
            out.append((float(logprob), greedy))
        return out
