"""Real models' tokenizers end to end: train, score and decode with Llama-2, Llama-3, GPT-2 and
Qwen2-shaped tokenizers; training and evaluation tokenize a prompt and its answer alike;
`symtune eval --hf_model` on a Llama-3-shaped directory."""

import functools
import json
import shutil

import gin
import numpy as np
import pytest
from flax import nnx

import tiny_tokenizers
from symtune import cli
from symtune.data.pipeline import PackStats, RowBuilder, train_batches
from symtune.data.prompts import TEMPLATES, Prompt
from symtune.data.sources import DataConfig
from symtune.data.vocab import get_vocabulary
from symtune.eval import runner
from symtune.eval.report import read_summary
from symtune.eval.runner import DecoderModel, on_mesh
from symtune.models.decode import Scores
from symtune.models.decoder import Decoder
from symtune.models.hf import export_hf
from symtune.models.presets import get_preset
from symtune.train.lm_objective import lm_loss
from symtune.train.mesh import MeshConfig, logical_rules, make_mesh
from symtune.train.optim import OptimizerConfig
from symtune.train.trainer import Trainer, TrainerConfig

FAMILIES = ("llama2", "llama3", "gpt2", "qwen2")
BIGBENCH_STYLE = ("Input: [1, 2]\nOutput: [2, 1]\n\nInput: [3, 4, 5]\nOutput: [5, 4, 3]\n\n"
                  "Input: [6, 7]\nOutput: ")
SYMBOL_PROMPT = Prompt(template=TEMPLATES[8], exemplars=(("the plot is thin", 0), ("a moving film", 1)),
                       query=("I loved it", 1), label_strings=("foo", "53347"))


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return {name: tiny_tokenizers.BUILDERS[name](root / name) for name in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_tiny_decoder_trains_scores_and_decodes_with_the_tokenizer(family, tokenizer_dirs, data_dir):
    vocab = get_vocabulary(f"hf:{tokenizer_dirs[family]}")
    batches = train_batches("symbol_tuning_sst2", vocab, batch_size=8, seq_len=512, shard_index=0,
                            shard_count=1, config=DataConfig(data_dir=str(data_dir)))
    batch = batches.batch(0)
    first = batch["decoder_segment_ids"][0] == 1
    tokens, weights = batch["decoder_target_tokens"][0][first], batch["decoder_loss_weights"][0][first]
    assert (tokens[0] == vocab.bos_id) == vocab.add_bos and tokens[-1] == vocab.eos_id and weights[-1] == 1

    config = get_preset("test-tiny").replace(vocab_size=vocab.vocab_size)
    mesh_config = MeshConfig(rules="dp")
    trainer = Trainer(lambda rngs: Decoder(config, rngs=rngs), functools.partial(lm_loss),
                      mesh=make_mesh(mesh_config), rules=logical_rules(mesh_config.rules),
                      config=TrainerConfig(steps=2), optimizer=OptimizerConfig(learning_rate=3e-3))
    state = trainer.init_state()
    for step in range(2):
        state, metrics = trainer.step(state, trainer.global_batch(batches.batch(step)))
        assert np.isfinite(float(metrics["loss"]))

    model = DecoderModel(trainer.model(state), vocab, trainer.context, max_length=512, max_decode_tokens=8,
                         batch_size=8, score_eos=True)
    scores = model.score([SYMBOL_PROMPT.inputs], [SYMBOL_PROMPT.label_strings])
    assert scores.shape == (1, 2) and np.isfinite(scores).all()
    [text] = model.generate([BIGBENCH_STYLE], ["\n\n"])
    assert isinstance(text, str)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_targets_are_the_ids_the_scorer_appends(family, tokenizer_dirs, monkeypatch):
    vocab = get_vocabulary(f"hf:{tokenizer_dirs[family]}")
    inputs, targets = RowBuilder(None, vocab, 256, True, PackStats()).encode(SYMBOL_PROMPT)
    calls = []

    def record(model, prompts, continuations, **kw):
        calls.append((prompts, continuations))
        return Scores(np.zeros((len(prompts), 2), np.float32), np.ones((len(prompts), 2), np.int32))

    monkeypatch.setattr(runner, "score_continuations", record)
    mesh = make_mesh(MeshConfig())
    context = functools.partial(on_mesh, mesh, logical_rules("dp"))
    with context():
        decoder = Decoder(get_preset("test-tiny").replace(vocab_size=vocab.vocab_size), rngs=nnx.Rngs(0))
    model = DecoderModel(decoder, vocab, context, max_length=256, max_decode_tokens=8, batch_size=8,
                         score_eos=True)
    model.score([SYMBOL_PROMPT.inputs], [SYMBOL_PROMPT.label_strings])
    [(prompts, continuations)] = calls
    assert prompts[0] == inputs
    assert continuations[0][SYMBOL_PROMPT.query[1]] == targets
    assert model.count(SYMBOL_PROMPT) == len(inputs) + max(len(c) for c in continuations[0])


@pytest.fixture(scope="module")
def llama3_model_dir(tmp_path_factory):
    """A Llama-3-shaped HF model directory: LlamaForCausalLM config, safetensors, tokenizer files."""
    path = tiny_tokenizers.llama3(tmp_path_factory.mktemp("llama3") / "model")
    config = get_preset("test-tiny").replace(vocab_size=get_vocabulary(f"hf:{path}").vocab_size)
    export_hf(config, Decoder(config, rngs=nnx.Rngs(0)), path)
    assert json.loads((path / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    return path


@pytest.fixture
def gin_clean():
    """The CLI leaves its gin bindings (EvalConfig.tasks, ...) in force; later tests must not see them."""
    yield
    gin.clear_config()


def eval_argv(model_dir, out, *extra):
    return ["eval", "--gin_file=runs/eval", f"--hf_model={model_dir}", f"--out={out}",
            "--gin.EvalConfig.tasks=['SUBJ','list_functions']", "--gin.EvalConfig.settings=['symbols']",
            "--gin.EvalConfig.max_examples=3", *extra]


def test_eval_command_runs_on_a_llama3_shaped_directory(llama3_model_dir, data_dir, tmp_path, monkeypatch,
                                                        gin_clean):
    monkeypatch.setenv("SYMTUNE_DATA_DIR", str(data_dir))
    assert cli.main(eval_argv(llama3_model_dir, tmp_path / "out")) == 0
    summary = read_summary(tmp_path / "out")
    assert set(summary["tasks"]) == {"SUBJ", "list_functions"}
    assert summary["tasks"]["SUBJ"]["symbols"]["total"] == 3
    assert summary["tasks"]["list_functions"]["exact_match"]["total"] == 3


def error_line(capsys) -> str:
    """The one line the CLI printed for a UserError."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("symtune: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_tokenizer_mistakes_are_one_line_and_exit_2(llama3_model_dir, tmp_path, capsys, gin_clean):
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    argv = eval_argv(llama3_model_dir, tmp_path / "a", f"--gin.EvalConfig.vocabulary='hf:{no_tokenizer}'")
    assert cli.main(argv) == 2
    assert f"no tokenizer.json at {no_tokenizer}" in error_line(capsys)

    no_eos = tmp_path / "no_eos"
    shutil.copytree(llama3_model_dir, no_eos)
    for name in ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        config = json.loads((no_eos / name).read_text())
        config.pop("eos_token", None), config.pop("eos_token_id", None)
        (no_eos / name).write_text(json.dumps(config))
    assert cli.main(eval_argv(no_eos, tmp_path / "b")) == 2
    line = error_line(capsys)
    assert "names no EOS token" in line and "--gin.SpecialTokens.eos_token=" in line
