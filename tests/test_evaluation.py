"""Zero-shot evaluation through lm-eval, with a real BPE tokenizer and small real torch LMs.

Everything runs the harness's own path (``simple_evaluate``, its prompts and metrics) on the six
offline fixture tasks; log-likelihoods are checked against log-softmax sums computed here by hand.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from tiny_eval_lm import TinyLM, build_tiny
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import PreTrainedTokenizerFast

# CI installs lm-eval with the test extra; the GPU machine's image lacks it, and its GPU test run
# must still collect the other files.
pytest.importorskip("lm_eval", reason="lm-eval is not installed")
from lm_eval.api.instance import Instance  # noqa: E402

from flowhn.errors import ConfigError
from flowhn.evaluate import evaluate_checkpoint, format_table
from flowhn.evaluation import (
    FIXTURE_TASKS,
    FlowHNLM,
    check_eval_config,
    eval_metrics,
    evaluate_lm,
    evaluate_module,
    run_zero_shot,
    short_name,
)
from flowhn.evaluation.tasks import FIXTURE_DATA, check_tasks

ROOT = Path(__file__).resolve().parents[1]
EOS = "<|endoftext|>"
SHORT = ("arc_e", "arc_c", "wino", "piqa", "hella", "boolq")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """Byte-level BPE trained on a few KB of real text (the fixture questions and passages)."""
    text = "\n".join(p.read_text() for p in sorted(FIXTURE_DATA.glob("*.jsonl")))
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=400, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS)


class PositionSplitLM(TinyLM):
    """Causal, but like a token-split model its output at t depends on where t lies in the whole
    input (first or second half), i.e. on the padded length."""

    split_ratio = 0.5

    def forward(self, input_ids):
        length = input_ids.shape[1]
        second_half = (torch.arange(length) >= length // 2).float()[None, :, None]
        return self.head(self.mix(self.embed(input_ids) + 3.0 * second_half))


@pytest.fixture(scope="module")
def model(tokenizer):
    return TinyLM(len(tokenizer)).eval()


def request(context: str, continuation: str) -> Instance:
    return Instance(request_type="loglikelihood", doc={}, arguments=(context, continuation), idx=0)


@torch.no_grad()
def by_hand(model, tokenizer, context: str, continuation: str, max_length: int = 10_000, width: int | None = None):
    """(sum of log-softmax over the continuation tokens, all of them argmax), lm-eval's encoding.

    lm-eval encodes context+continuation as one string and takes the continuation tokens as what
    follows the context's own tokens; an empty context is replaced by the EOS token.
    """
    if context:
        context_ids = tokenizer.encode(context, add_special_tokens=False)
        continuation_ids = tokenizer.encode(context + continuation, add_special_tokens=False)[len(context_ids):]
    else:
        context_ids = [tokenizer.eos_token_id]
        continuation_ids = tokenizer.encode(continuation, add_special_tokens=False)
    sequence = (context_ids + continuation_ids)[-(max_length + 1):]
    inputs = sequence[:-1] + [tokenizer.eos_token_id] * ((width or 0) - len(sequence) + 1)
    logprobs = model(torch.tensor([inputs]))[0].log_softmax(-1)
    n = len(continuation_ids)
    rows = logprobs[len(sequence) - 1 - n:len(sequence) - 1]
    target = torch.tensor(sequence[-n:])
    return float(rows.gather(1, target[:, None]).sum()), bool((rows.argmax(-1) == target).all())


PAIRS = [
    ("Question: Which planet is closest to the Sun?\nAnswer:", " Mercury"),
    ("Question: Which planet is closest to the Sun?\nAnswer:", " Venus"),
    ("The trophy does not fit into the brown suitcase because the trophy", " is too large."),
    ("", "Penguins are a group of aquatic flightless birds."),  # empty context: EOS conditions it
    ("Water freezes at", " 0 degrees"),
    ("A man places two slices of bread on a cutting board. He", " spreads peanut butter on one slice."),
]


def test_loglikelihood_equals_log_softmax_sum(model, tokenizer):
    lm = FlowHNLM(model, tokenizer, max_length=256, batch_size=4, device="cpu")
    got = lm.loglikelihood([request(c, x) for c, x in PAIRS], disable_tqdm=True)
    for (context, continuation), (logprob, greedy) in zip(PAIRS, got):
        ref_logprob, ref_greedy = by_hand(model, tokenizer, context, continuation)
        assert logprob == pytest.approx(ref_logprob, abs=1e-4)
        assert greedy == ref_greedy
    # Batching and right-padding must not change any score.
    one_by_one = FlowHNLM(model, tokenizer, max_length=256, batch_size=1, device="cpu")
    alone = one_by_one.loglikelihood([request(c, x) for c, x in PAIRS], disable_tqdm=True)
    assert [lp for lp, _ in alone] == pytest.approx([lp for lp, _ in got], abs=1e-4)


def test_greedy_flag_is_true_for_the_argmax_tokens(model, tokenizer):
    the = tokenizer.encode(" the", add_special_tokens=False)
    assert len(the) == 1
    biased = copy.deepcopy(model)
    with torch.no_grad():
        biased.head.bias[the[0]] += 100.0  # " the" is now the argmax at every position
    context = "Question: Which organ pumps blood through the body?\nAnswer:"
    lm = FlowHNLM(biased, tokenizer, max_length=256, batch_size=2, device="cpu")
    (_, greedy), (_, not_greedy) = lm.loglikelihood(
        [request(context, " the the the"), request(context, " the heart")], disable_tqdm=True)
    assert greedy and not not_greedy


def test_long_requests_are_truncated_on_the_left(model, tokenizer):
    limit = 16
    lengths = {p: (len(tokenizer.encode(p[0] + p[1])), len(tokenizer.encode(p[1]))) for p in PAIRS if p[0]}
    pairs = [p for p, (total, cont) in lengths.items() if cont <= limit]
    assert sum(lengths[p][0] > limit + 1 for p in pairs) >= 2  # some really are cut
    lm = FlowHNLM(model, tokenizer, max_length=limit, batch_size=3, device="cpu")
    got = lm.loglikelihood([request(c, x) for c, x in pairs], disable_tqdm=True)
    for (context, continuation), (logprob, _) in zip(pairs, got):
        assert logprob == pytest.approx(by_hand(model, tokenizer, context, continuation, max_length=limit)[0], abs=1e-4)


def test_rolling_loglikelihood_scores_every_token_once(model, tokenizer):
    text = "The Pacific Ocean is the largest and deepest of Earth's five oceanic divisions."
    ids = tokenizer.encode(text, add_special_tokens=False)
    rolling = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)

    # Short enough for one window: log p(text | EOS) in a single pass.
    whole = FlowHNLM(model, tokenizer, max_length=len(ids) + 5, batch_size=2, device="cpu")
    with torch.no_grad():
        logprobs = model(torch.tensor([[tokenizer.eos_token_id] + ids[:-1]]))[0].log_softmax(-1)
    reference = float(logprobs.gather(1, torch.tensor(ids)[:, None]).sum())
    assert whole.loglikelihood_rolling([rolling], disable_tqdm=True)[0] == pytest.approx(reference, abs=1e-4)

    # Windows of 8: the first predicts tokens 0..7 from EOS; each later window predicts the next
    # (up to) 8 tokens from the 8 tokens before each of them.
    window = 8
    assert len(ids) > 2 * window
    expected, done = 0.0, 0
    with torch.no_grad():
        while done < len(ids):
            end = min(done + window, len(ids))
            inputs = ([tokenizer.eos_token_id] + ids)[max(0, end - window):end]
            logprobs = model(torch.tensor([inputs]))[0].log_softmax(-1)
            targets = torch.tensor(ids[done:end])
            expected += float(logprobs[-(end - done):].gather(1, targets[:, None]).sum())
            done = end
    windowed = FlowHNLM(model, tokenizer, max_length=window, batch_size=3, device="cpu")
    assert windowed.loglikelihood_rolling([rolling], disable_tqdm=True)[0] == pytest.approx(expected, abs=1e-4)


def test_position_dependent_models_are_scored_at_the_fixed_length(tokenizer):
    model = PositionSplitLM(len(tokenizer)).eval()
    requests = [request(c, x) for c, x in PAIRS]
    assert len(requests) % 4, "the last batch should be a short one"
    lm = FlowHNLM(model, tokenizer, max_length=48, batch_size=4, device="cpu")
    assert lm.pad_to == "max_length"
    shapes = set()
    hook = model.register_forward_pre_hook(lambda _, args: shapes.add(tuple(args[0].shape)))
    batched = [lp for lp, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    hook.remove()
    # One input shape, the short last batch padded with rows of padding: a compiled model compiles once.
    assert shapes == {(4, 48)}
    alone = [lp for lp, _ in FlowHNLM(model, tokenizer, max_length=48, batch_size=1, device="cpu")
             .loglikelihood(requests, disable_tqdm=True)]
    reference = [by_hand(model, tokenizer, c, x, max_length=48, width=48)[0] for c, x in PAIRS]
    assert batched == pytest.approx(reference, abs=1e-4)
    assert alone == pytest.approx(reference, abs=1e-4)
    # Padding to each batch's longest row would make scores depend on the batch's other rows.
    ragged = FlowHNLM(model, tokenizer, max_length=48, batch_size=4, device="cpu", pad_to="longest")
    assert [lp for lp, _ in ragged.loglikelihood(requests, disable_tqdm=True)] != pytest.approx(reference, abs=1e-4)


def test_real_split_model_scores_do_not_depend_on_batching(tokenizer):
    """The same check on the project's FlowHN block with fac_split, whose routing follows T."""
    from conftest import small_cfg

    from flowhn import build_model

    model = build_model(small_cfg("flowhn", "split=fac_split", seq_len=64)).eval()
    assert model.split_ratio is not None
    pairs = [p for p in PAIRS if len(tokenizer.encode(p[1])) <= 64]
    requests = [request(c, x) for c, x in pairs]
    batched = [lp for lp, _ in FlowHNLM(model, tokenizer, max_length=64, batch_size=4, device="cpu")
               .loglikelihood(requests, disable_tqdm=True)]
    alone = [lp for lp, _ in FlowHNLM(model, tokenizer, max_length=64, batch_size=1, device="cpu")
             .loglikelihood(requests, disable_tqdm=True)]
    reference = [by_hand(model, tokenizer, c, x, max_length=64, width=64)[0] for c, x in pairs]
    assert batched == pytest.approx(reference, abs=1e-3)
    assert alone == pytest.approx(reference, abs=1e-3)


def test_a_compiled_model_is_compiled_once_for_validation_and_scoring(tokenizer):
    """Scoring reuses validation's graph: the same input shape (padded to max_length, as the model is
    compiled) and the same grad mode (inference_mode, Lightning's). On an H200 a 135M no_split model
    padded per batch, under no_grad, compiled three more graphs of ~23 s each for 204 fixture requests."""
    from conftest import small_cfg
    from torch._dynamo.utils import counters

    from flowhn import build_model

    torch._dynamo.reset()
    counters.clear()
    model = build_model(small_cfg("flowhn", "split=no_split", seq_len=64)).eval()
    assert model.split_ratio is None and model.compile_scope is None
    eager = [by_hand(model, tokenizer, c, x, max_length=64)[0] for c, x in PAIRS]
    model.compile_in_place("model", backend="eager")  # dynamo's graph capture only: cheap on CPU
    assert model.compile_scope == "model"
    with torch.inference_mode():  # what validation_step runs under
        model(torch.zeros(4, 64, dtype=torch.long))
    assert counters["stats"]["unique_graphs"] == 1
    lm = FlowHNLM(model, tokenizer, max_length=64, batch_size=4, device="cpu")
    assert lm.pad_to == "max_length"
    scores = [lp for lp, _ in lm.loglikelihood([request(c, x) for c, x in PAIRS], disable_tqdm=True)]
    assert counters["stats"]["unique_graphs"] == 1
    # Right padding is after every scored position of a causal model: the scores are unchanged.
    assert scores == pytest.approx(eager, abs=1e-4)
    torch._dynamo.reset()


def test_generation_is_refused_clearly(model, tokenizer):
    lm = FlowHNLM(model, tokenizer, max_length=64, device="cpu")
    with pytest.raises(NotImplementedError, match="generate_until"):
        lm.generate_until([])


# ---------------------------------------------------------------------------------------------
# the harness path on the six fixtures


def test_all_fixture_tasks_run_end_to_end(model, tokenizer):
    before = model.training
    summary = run_zero_shot(model, tokenizer, list(FIXTURE_TASKS), limit=5, batch_size=8, device="cpu", max_length=256)
    assert model.training == before
    assert list(summary) == [*SHORT, "avg"]
    for task in SHORT:
        assert 0.0 <= summary[task]["acc"] <= 1.0
        if task in ("wino", "boolq"):  # their lm-eval configs define acc only
            assert summary[task]["acc_norm"] is None
        else:
            assert 0.0 <= summary[task]["acc_norm"] <= 1.0
    assert summary["avg"] == pytest.approx(sum(summary[t]["acc"] for t in SHORT) / 6)

    flat = eval_metrics(summary)
    assert flat["eval/avg"] == summary["avg"]
    assert flat["eval/arc_e/acc_norm"] == summary["arc_e"]["acc_norm"]
    assert "eval/wino/acc_norm" not in flat
    assert len(flat) == 1 + 6 + 4


def gold_index(sample) -> int:
    if isinstance(sample["target"], int) or str(sample["target"]).isdigit():
        return int(sample["target"])
    return int(sample["doc"]["answer"]) - 1  # winogrande: the target is the shared continuation


@pytest.fixture(scope="module")
def all_samples(model, tokenizer):
    lm = FlowHNLM(model, tokenizer, max_length=256, batch_size=8, device="cpu")
    return evaluate_lm(lm, list(FIXTURE_TASKS), log_samples=True)


def test_harness_scores_are_hand_loglikelihoods_and_acc_their_argmax(all_samples, model, tokenizer):
    assert {t: all_samples["n-samples"][t]["effective"] for t in FIXTURE_TASKS} == {
        f"fixture_{t}": n for t, n in [("arc_easy", 12), ("arc_challenge", 12), ("winogrande", 12), ("piqa", 12),
                                        ("hellaswag", 10), ("boolq", 10)]}
    for task in FIXTURE_TASKS:
        correct = []
        for sample in all_samples["samples"][task]:
            hand = [by_hand(model, tokenizer, context, continuation)[0]
                    for context, continuation in sample["arguments"]]
            harness = [resp[0][0] for resp in sample["resps"]]
            assert harness == pytest.approx(hand, abs=1e-4), task
            best = max(range(len(hand)), key=hand.__getitem__)
            assert sample["acc"] == float(best == gold_index(sample)), task
            correct.append(sample["acc"])
        assert all_samples["results"][task]["acc,none"] == pytest.approx(sum(correct) / len(correct))


class GoldOracle(nn.Module):
    """Puts +30 on the token that continues a known gold (context + answer) token sequence.

    Its gold answers then have log-likelihood ~0 and every other answer loses >= 30 nats where it
    leaves the gold path, so accuracy is 1 exactly when prompts and continuations are aligned.
    """

    split_ratio = None

    def __init__(self, vocab: int, gold_sequences: list[list[int]]):
        super().__init__()
        self.vocab = vocab
        self.next_tokens: dict[int, set[int]] = {}
        for sequence in gold_sequences:
            key = 0
            for token, following in zip(sequence, sequence[1:]):
                key = hash((key, token))
                self.next_tokens.setdefault(key, set()).add(following)

    def forward(self, input_ids):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for b, row in enumerate(input_ids.tolist()):
            key = 0
            for t, token in enumerate(row):
                key = hash((key, token))
                for following in self.next_tokens.get(key, ()):
                    logits[b, t, following] = 30.0
        return logits


def test_gold_preferring_model_gets_every_fixture_right(all_samples, tokenizer):
    encoder = FlowHNLM(TinyLM(len(tokenizer)), tokenizer, max_length=256, device="cpu")
    gold = []
    for task in FIXTURE_TASKS:
        for sample in all_samples["samples"][task]:
            context, continuation = sample["arguments"][gold_index(sample)]
            context_ids, continuation_ids = encoder._encode_pair(context, continuation)
            gold.append(context_ids + continuation_ids)
    oracle = GoldOracle(len(tokenizer), gold)
    summary = run_zero_shot(oracle, tokenizer, list(FIXTURE_TASKS), batch_size=16, device="cpu", max_length=256)
    for task in SHORT:
        assert summary[task]["acc"] == 1.0, task
        assert summary[task]["acc_norm"] in (None, 1.0), task
    assert summary["avg"] == 1.0


# ---------------------------------------------------------------------------------------------
# task names and config checks


def test_task_names_map_to_the_paper_columns():
    paper = ("arc_easy", "arc_challenge", "winogrande", "piqa", "hellaswag", "boolq")
    assert [short_name(t) for t in paper] == list(SHORT)
    assert [short_name(t) for t in FIXTURE_TASKS] == list(SHORT)
    assert short_name("lambada_openai") == "lambada_openai"


@pytest.mark.parametrize(("tasks", "message"), [
    ([], "eval.tasks: empty"),
    ("arc_easy", "eval.tasks: must be a list"),
    (["fixture_arc_easy", "no_such_task"], "unknown lm-eval task"),
    (["arc_easy", "fixture_arc_easy"], r"\['arc_e'\] twice"),
])
def test_bad_task_lists_fail_before_work(tasks, message):
    with pytest.raises(ConfigError, match=message):
        check_tasks(tasks)


def test_eval_config_checks():
    assert check_eval_config({"tasks": []}) is None
    assert check_eval_config({"tasks": ["fixture_piqa"], "limit": 3}) is not None
    with pytest.raises(ConfigError, match="eval.limit"):
        check_eval_config({"tasks": ["fixture_piqa"], "limit": 0})
    with pytest.raises(ConfigError, match="eval.batch_size"):
        check_eval_config({"tasks": ["fixture_piqa"], "batch_size": "8"})
    with pytest.raises(ConfigError, match="eval.precision"):
        check_eval_config({"tasks": ["fixture_piqa"], "precision": "fp8-mixed"})


def test_eval_config_group_composes():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        paper = compose("eval", overrides=["ckpt=x.ckpt"])
        fixtures = compose("eval", overrides=["ckpt=x.ckpt", "eval=fixtures", "eval.limit=2"])
    assert list(paper.eval.tasks) == ["arc_easy", "arc_challenge", "winogrande", "piqa", "hellaswag", "boolq"]
    assert list(fixtures.eval.tasks) == list(FIXTURE_TASKS)
    assert fixtures.eval.limit == 2 and fixtures.eval.batch_size == 16
    check_eval_config(fixtures.eval)


# ---------------------------------------------------------------------------------------------
# checkpoints: evaluate_module at the end of training and the evaluate CLI


class ContractModule(L.LightningModule):
    """Follows the training checkpoint contract: hparams["cfg"] (plain dict) and ``self.model``."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.save_hyperparameters({"cfg": cfg})
        self.model = build_tiny(OmegaConf.create(cfg))

    def training_step(self, batch, batch_idx):
        logits = self.model(batch["input_ids"])
        return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


@pytest.fixture(scope="module")
def trained_run(tokenizer, tmp_path_factory):
    """A real (tiny) Lightning run: <run_dir>/checkpoints/last.ckpt and <run_dir>/tokenizer/."""
    run_dir = tmp_path_factory.mktemp("run")
    seq = 32
    ids = torch.tensor(tokenizer.encode((FIXTURE_DATA / "boolq.jsonl").read_text(), add_special_tokens=False))
    rows = ids[: (len(ids) - 1) // seq * seq + 1]
    batches = [{"input_ids": rows[i:i + seq][None], "labels": rows[i + 1:i + seq + 1][None]}
               for i in range(0, len(rows) - seq - 1, seq)]
    cfg = {"model": {"_target_": "tiny_eval_lm.build_tiny", "vocab": len(tokenizer), "dim": 24},
           "data": {"seq_len": seq}}
    module = ContractModule(cfg)
    trainer = L.Trainer(accelerator="cpu", max_steps=4,
                        logger=L.pytorch.loggers.CSVLogger(run_dir, name="csv", version=""),
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    (run_dir / "checkpoints").mkdir()
    trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    tokenizer.save_pretrained(run_dir / "tokenizer")
    return run_dir, module, trainer


def test_evaluate_module_logs_eval_metrics(trained_run, tokenizer):
    run_dir, module, trainer = trained_run
    eval_cfg = OmegaConf.create({"tasks": ["fixture_arc_easy", "fixture_boolq"], "limit": 3, "batch_size": 8,
                                 "max_length": None, "add_bos_token": False, "precision": None})
    summary = evaluate_module(module, tokenizer, eval_cfg, trainer)
    assert list(summary) == ["arc_e", "boolq", "avg"]
    rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"eval/avg", "eval/arc_e/acc", "eval/arc_e/acc_norm", "eval/boolq/acc"} <= set(header)
    last = dict(zip(header, rows[-1].split(",")))
    assert float(last["eval/avg"]) == pytest.approx(summary["avg"])


def test_evaluate_checkpoint_writes_eval_json(trained_run, tokenizer, capsys):
    run_dir, module, _ = trained_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    report = evaluate_checkpoint(ckpt, tasks=["fixture_piqa", "fixture_winogrande"], limit=4, batch_size=4,
                                 build_model=build_tiny)
    written = json.loads((ckpt.parent / "eval.json").read_text())
    assert written == json.loads(json.dumps(report))
    assert list(written["results"]) == ["piqa", "wino", "avg"]
    assert written["n_samples"] == {"piqa": 4, "wino": 4}
    assert written["max_length"] == 32  # the run's data.seq_len
    assert "piqa" in capsys.readouterr().out

    # The rebuilt model scores exactly like the trained one.
    direct = run_zero_shot(module.model, tokenizer, ["fixture_piqa", "fixture_winogrande"], limit=4, batch_size=4,
                           device="cpu", max_length=32)
    assert written["metrics"] == pytest.approx(eval_metrics(direct))
    assert "avg" in format_table(written)


def test_evaluate_checkpoint_rejects_bad_inputs_first(trained_run, tmp_path):
    run_dir, _, _ = trained_run
    with pytest.raises(ConfigError, match="ckpt: .* does not exist"):
        evaluate_checkpoint(tmp_path / "missing.ckpt", tasks=["fixture_piqa"])
    lonely = tmp_path / "checkpoints" / "x.ckpt"
    lonely.parent.mkdir()
    lonely.write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes())
    with pytest.raises(ConfigError, match="no tokenizer"):
        evaluate_checkpoint(lonely, tasks=["fixture_piqa"])
    with pytest.raises(ConfigError, match="eval.tasks"):
        evaluate_checkpoint(run_dir / "checkpoints" / "last.ckpt", tasks=[], build_model=build_tiny)
    with pytest.raises(ConfigError, match="eval.limit"):
        evaluate_checkpoint(run_dir / "checkpoints" / "last.ckpt", tasks=["fixture_piqa"], limit=-1)


@pytest.mark.slow
def test_evaluate_cli(trained_run):
    """``python -m flowhn.evaluate`` end to end; the checkpoint's model._target_ points at build_tiny."""
    run_dir, _, _ = trained_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    out = run_dir / "cli_eval.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "flowhn.evaluate", f"ckpt={ckpt}", "eval=fixtures", "eval.limit=2",
                           f"out={out}"], cwd=run_dir, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert list(report["results"]) == [*SHORT, "avg"]
    assert "avg" in done.stdout

    bad = subprocess.run([sys.executable, "-m", "flowhn.evaluate", f"ckpt={run_dir / 'nope.ckpt'}"], cwd=run_dir,
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("config error: ckpt:")
