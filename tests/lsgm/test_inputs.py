"""Bad input at the entry points beside training and at the data loaders (issue 14): one line naming the value and
the fix, exit status 2 (lsgm.cli.BAD_INPUT), before a model is loaded or any work is done."""

import importlib
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from lsgm import evaluate, sample
from lsgm.cli import BAD_INPUT, DIVERGED, CommandError, run
from lsgm.data import BatchStream, DataError, ImageDataset, load_dataset
from lsgm.metrics import quality

inpaint = importlib.import_module("lsgm.apps.inpaint")  # the module: lsgm.apps.inpaint is also the function
interpolate = importlib.import_module("lsgm.apps.interpolate")

COMMANDS = {
    "sample": (sample.main, sample.CONFIG, "lsgm.sample"),
    "evaluate": (evaluate.main, evaluate.CONFIG, "lsgm.evaluate"),
    "inpaint": (inpaint.run, inpaint.CONFIG, "lsgm.apps.inpaint"),
    "interpolate": (interpolate.run, interpolate.CONFIG, "lsgm.apps.interpolate"),
}


def refusal(command: str, *arguments: str, ckpt: str = "no/such/checkpoint.pt") -> str:
    """The one line a command exits with (status BAD_INPUT) for `arguments`, without its `program: error: ` prefix.

    The default checkpoint does not exist, so a message about anything else shows that the argument was checked
    before the model was loaded."""
    main, config, program = COMMANDS[command]
    with pytest.raises(CommandError) as raised:
        run(main, config, program, [f"ckpt={ckpt}", *arguments])
    assert raised.value.code == BAD_INPUT
    message = str(raised.value)
    assert message.startswith(f"{program}: error: ") and "\n" not in message, message
    return message.removeprefix(f"{program}: error: ")


@pytest.mark.parametrize("command, arguments, expected", [
    ("sample", ["num_samples=0"], "num_samples must be a positive integer, got 0"),
    ("sample", ["num_samples=-3"], "num_samples must be a positive integer, got -3"),
    ("sample", ["batch_size=0"], "batch_size must be a positive integer, got 0"),
    ("sample", ["temperature=nan"], "temperature must be a finite number > 0, got nan"),
    ("sample", ["temperature=inf"], "temperature must be a finite number > 0, got inf"),
    ("sample", ["temperature=.inf"], "temperature must be a finite number > 0, got '.inf'"),
    ("sample", ["guidance=abc"], "guidance must be a finite number, got 'abc'"),
    ("sample", ["seed=-1"], "seed must be an integer in 0..2**63-1, got -1"),
    ("sample", ["sampler=euler_a"], "unknown sampler 'euler_a'; valid: ddim, ddpm, dpm2m, heun, ode, pc, sde"),
    ("sample", ["sampler.name=euler_a"], "unknown sampler.name 'euler_a'; valid: ode, sde, ddpm, ddim, heun, dpm2m, "
                                         "pc"),
    ("sample", ["sampler.options=3"], "sampler.options must be a set of options such as sampler.options.steps=20, "
                                      "got 3"),
    ("sample", ["sampler.options.eta=0.5"], "unknown argument sampler.options.eta=0.5 (sampler.options holds the "
                                            "options that the sampler's config file lists: add another as "
                                            "+sampler.options.eta=0.5, as in training); valid: sampler=<ddim|ddpm|"),
    ("sample", ["+sampler.options.rtol=1e-3"], "sampler.options.rtol is already in the config; set it without the +"),
    ("sample", ["condition.class=-2"], "condition.class must be an integer ≥ 0, got -2"),
    ("sample", ["out=samples.jpg"], "out must be a file name ending in .npz or .png, got 'samples.jpg'"),
    ("sample", ["device=gpu"], "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("sample", ["num_samples=[1,"], "cannot parse 'num_samples=[1,'"),
    ("sample", ["num_samples"], "cannot parse 'num_samples' (missing EQUAL at '<EOF>')"),
    ("sample", ["tasks=nll,bound"], "tasks=nll,bound is a sweep, which this command does not run; write a list as "
                                    "key=[a,b]"),
    ("sample", ["--multirun"], "unknown flag --multirun; the arguments are key=value overrides"),
    ("sample", ["hydra.run.dir=x"], "hydra.run.dir=x: hydra's own settings do not apply to this command"),
    ("sample", ["sampler=[1]"], "cannot compose the arguments: "),
    ("sample", ["out=${nowhere}"], "cannot resolve the arguments ['ckpt=no/such/checkpoint.pt', 'out=${nowhere}']"),
    ("sample", ["condition.label=3"], "unknown argument condition.label=3; valid: sampler=<ddim|ddpm|dpm2m|heun|ode|"
                                      "pc|sde>, sampler.name, sampler.options.method, sampler.options.rtol, "
                                      "sampler.options.atol, ckpt, num_samples, "),
    ("sample", ["logger=none"], "unknown argument logger=none; valid: sampler=<"),
    ("evaluate", ["tasks=[]"], "tasks must be a non-empty list such as tasks=[nll,bound], got []"),
    ("evaluate", ["tasks=[nll,fid]"], "unknown task 'fid'; valid: nll, bound, quality"),
    ("evaluate", ["split=dev"], "unknown split 'dev'; valid: train, val, test"),
    ("evaluate", ["max_images=0"], "max_images must be a positive integer, got 0"),
    ("evaluate", ["nll.k=0"], "nll.k must be a positive integer, got 0"),
    ("evaluate", ["nll.method=rk4"], "unknown nll.method 'rk4'; valid: rk45, dopri5, "),
    ("evaluate", ["nll.kk=4"], "unknown argument nll.kk=4; valid: sampler=<ddim|ddpm|dpm2m|heun|ode|pc|sde>, "
                               "logger=<none|wandb>, ckpt, tasks,"),
    ("evaluate", ["bound.report_steps=[]"], "bound.report_steps must be a non-empty list"),
    ("evaluate", ["quality.num_samples=0"], "quality.num_samples must be a positive integer, got 0"),
    ("evaluate", ["sampler=euler_a"], "unknown sampler 'euler_a'; valid: ddim, ddpm, dpm2m, heun, ode, pc, sde"),
    ("evaluate", ["sampler.name=euler_a"], "unknown sampler.name 'euler_a'"),
    ("evaluate", ["sampler.options.steps=3"], "unknown argument sampler.options.steps=3 (sampler.options holds the "
                                              "options that the sampler's config file lists: add another as "
                                              "+sampler.options.steps=3"),
    ("evaluate", ["logger=cloud"], "unknown logger 'cloud'; valid: none, wandb"),
    ("evaluate", ["logger.mode=cloud"], "unknown logger.mode 'cloud'; valid: offline, online, disabled, none"),
    ("inpaint", ["masks=[]"], "masks must be a non-empty list such as masks=[half,wide], got []"),
    ("inpaint", ["masks=[square]"], "unknown mask 'square'; valid: wide, narrow, half, lines, every_second, expand"),
    ("inpaint", ["num_images=0"], "num_images must be a positive integer, got 0"),
    ("inpaint", ["t_T=1"], "t_T must be an integer ≥ 2 (the steps of the respaced chain), got 1"),
    ("inpaint", ["jump_length=0"], "jump_length must be a positive integer, got 0"),
    ("inpaint", ["latent_threshold=1.5"], "latent_threshold must be a number in [0, 1], got 1.5"),
    ("inpaint", ["out=grid"], "out must be a file name ending in .png, got 'grid'"),
    ("interpolate", ["t_fractions=[]"], "t_fractions must be a non-empty list such as t_fractions=[0,0.5,1], got []"),
    ("interpolate", ["t_fractions=[0,1.5]"], "a t_fraction must be a number in [0, 1], got 1.5"),
    ("interpolate", ["lambdas=[]"], "lambdas must be a non-empty list such as lambdas=[0,0.5,1], got []"),
    ("interpolate", ["pairs=0"], "pairs must be a positive integer, got 0"),
    ("interpolate", ["pairs=[[0,1,2]]"], "pairs must be a count or index pairs such as pairs=[[0,1],[2,3]]"),
    ("interpolate", ["method=slerp"], "unknown method 'slerp'; valid: ddpm, ode"),
])
def test_bad_arguments_are_refused_before_the_model_loads(command, arguments, expected):
    assert refusal(command, *arguments).startswith(expected)


def test_outputs_that_cannot_be_written_are_refused_before_any_work(tmp_path):
    (tmp_path / "file").write_text("")
    assert refusal("sample", f"out={tmp_path}/file/s.npz") == f"out={tmp_path}/file/s.npz lies under the file " \
                                                             f"{tmp_path}/file; choose another folder"
    (tmp_path / "s.png").mkdir()
    assert refusal("sample", f"out={tmp_path}/s.npz") == f"out={tmp_path}/s.png is a folder; give a file name inside it"
    assert refusal("evaluate", f"out={tmp_path}/file").startswith(f"out={tmp_path}/file: {tmp_path}/file is a file")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_a_cuda_device_without_cuda_is_refused_before_the_checkpoint_is_read():
    message = "device='cuda' but CUDA is not available here; use device=cpu or device=auto"
    assert refusal("sample", "device=cuda") == message
    assert refusal("inpaint", "device=cuda:0") == message.replace("'cuda'", "'cuda:0'")


def test_a_mask_that_is_not_an_image_is_refused(tmp_path):
    (tmp_path / "mask.png").write_bytes(b"not a png")
    message = refusal("inpaint", f"masks=[half,{tmp_path}/mask.png]")
    assert message.startswith(f"mask file {tmp_path}/mask.png is not a readable image (UnidentifiedImageError")
    assert message.endswith("give a PNG whose white pixels mark the known region")


def test_unknown_sampler_options_are_refused_before_sampling(tiny_checkpoint):
    message = refusal("sample", "sampler=heun", "+sampler.options.X=1", ckpt=str(tiny_checkpoint))
    assert message.startswith("unknown option(s) ['X'] of sampler heun; valid: ")  # the sampler's and model.sample's
    assert {"prior", "rho", "steps", "t_eps", "times"} <= set(message.split("valid: ")[1].split(", "))
    assert refusal("sample", "sampler=ode", "sampler.options.rtol=-1", ckpt=str(tiny_checkpoint)) == \
        "sampler.options.rtol must be a finite number > 0, got -1"
    assert refusal("sample", "sampler=ddim", "sampler.options.eta=fast", ckpt=str(tiny_checkpoint)) == \
        "sampler.options.eta must be a finite number ≥ 0, got 'fast'"
    assert refusal("evaluate", "tasks=[quality]", "+sampler.options.X=1", ckpt=str(tiny_checkpoint)).startswith(
        "unknown option(s) ['X'] of sampler")  # the run's own sampler
    assert refusal("evaluate", "tasks=[quality]", "sampler=ddim", "+sampler.options.X=1",
                   ckpt=str(tiny_checkpoint)).startswith("unknown option(s) ['X'] of sampler ddim")


def test_a_request_larger_than_memory_is_refused_before_sampling(tiny_checkpoint):
    message = refusal("sample", "num_samples=10000000000000", ckpt=str(tiny_checkpoint))
    assert message.startswith("num_samples=10000000000000 needs about ")
    assert message.endswith("is available; lower num_samples, or draw the samples in several runs with different "
                            "seeds")


def test_sampling_that_diverges_exits_with_status_3_in_one_line(tiny_checkpoint):
    main, config, program = COMMANDS["sample"]
    with pytest.raises(CommandError) as raised:
        run(main, config, program, [f"ckpt={tiny_checkpoint}", "temperature=1e30", "sampler=heun",
                                    "sampler.options.steps=2", "num_samples=2", "out=never.npz"])
    assert raised.value.code == DIVERGED  # the network's output at t = 1, or, where the score prior's channels are
    # all inactive (masked out of the network), the decoder's output for latents of size ~1e30
    assert re.match(r"lsgm\.sample: error: non-finite value in (eps_fn's output at t = 1|the decoder's output)",
                    str(raised.value)), str(raised.value)
    assert str(raised.value).endswith("or lower temperature, guidance or the sampler's options")


@pytest.mark.parametrize("out", ["a.png", "a.npz"])
def test_sample_writes_and_prints_the_paths_out_names(tiny_checkpoint, tmp_path, capsys, out):
    run(sample.main, sample.CONFIG, "lsgm.sample", [f"ckpt={tiny_checkpoint}", "num_samples=2", "sampler=heun",
                                                    "sampler.options.steps=2", f"out={tmp_path / out}"])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.npz", "a.png"]
    assert capsys.readouterr().out.strip().endswith(f": {tmp_path / 'a.npz'}, grid {tmp_path / 'a.png'}")
    assert np.load(tmp_path / "a.npz")["samples"].shape == (2, 1, 8, 8)


def test_a_given_time_grid_replaces_the_grid_options_of_the_sampler_config(tiny_checkpoint, tmp_path, capsys):
    """configs/sampler/dpm2m.yaml sets steps=20; +sampler.options.times gives the grid instead (one network
    evaluation per point, as steps counts them)."""
    run(sample.main, sample.CONFIG, "lsgm.sample", [f"ckpt={tiny_checkpoint}", "num_samples=2", "sampler=dpm2m",
                                                    "+sampler.options.times=[1.0,0.5,0.001]", "progress=false",
                                                    f"out={tmp_path / 's.npz'}"])
    assert "samples with dpm2m (3 network evaluations per batch)" in capsys.readouterr().out


def test_commands_exit_with_status_2_and_one_line(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "x.pt")
    commands = [["lsgm.sample", "ckpt=x.pt", "num_samples=0"], ["lsgm.metrics.quality", str(tmp_path / "x.pt")]]
    for command in commands:
        result = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
        assert result.stderr.startswith(f"{command[0]}: error: ")
    assert "x.pt is not a .npz of arrays (e.g. a torch .pt file or another zip)" in result.stderr


def test_quality_command_refuses_bad_arguments_in_one_line(tmp_path, capsys):
    for arguments, expected in [([str(tmp_path / "none.npz")], f"{tmp_path}/none.npz is not a file"),
                                ([__file__, "--data", "imagenet"], "unknown --data 'imagenet'"),
                                ([__file__, "--json", str(tmp_path)], f"--json={tmp_path} is a folder")]:
        with pytest.raises(CommandError) as raised:
            quality.main(arguments)
        assert raised.value.code == BAD_INPUT
        assert str(raised.value).startswith(f"lsgm.metrics.quality: error: {expected}")


# --- the data loaders ----------------------------------------------------------------------------------------------
def data_error(*arguments, **options) -> str:
    with pytest.raises(DataError) as raised:
        load_dataset(*arguments, **options)
    return str(raised.value)


def test_npz_levels_beyond_16_bits_are_refused_before_any_allocation(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 1, 2, 2), np.uint8), levels=np.array(2**40))
    assert data_error("npz", tmp_path / "a.npz") == f"npz: levels of {tmp_path}/a.npz must be an integer in " \
                                                    "2..65536, got 1099511627776"
    np.savez(tmp_path / "b.npz", x=np.zeros((4, 1, 2, 2), np.uint8))
    assert data_error("npz", tmp_path / "b.npz", levels=2**40) == "npz: levels must be an integer in 2..65536, " \
                                                                  "got 1099511627776"
    assert data_error("npz", tmp_path / "b.npz", levels=2, test_fraction=1.0) == \
        "npz: test_fraction must be a number in [0, 1), got 1.0"


def test_npz_files_that_hold_no_arrays_or_huge_labels_are_refused(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "model.pt")
    assert "is not a .npz of arrays (e.g. a torch .pt file or another zip)" in data_error("npz", tmp_path / "model.pt")
    np.savez(tmp_path / "y.npz", x=np.zeros((2, 1, 2, 2), np.uint8), y=np.array([0, 2**40]), levels=np.array(2))
    assert "must hold integers in 0..65535 (class indices), got values in 0..1099511627776" in \
        data_error("npz", tmp_path / "y.npz")
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 1, 2, 2), np.uint8), levels=np.array(2))
    assert "with no pixels" in data_error("npz", tmp_path / "empty.npz")


def test_folder_sizes_are_positive_and_fit_in_memory(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    assert data_error("folder", tmp_path, size=0) == "folder: size (the side images are resized to) must be a " \
                                                     "positive integer, got 0"
    assert data_error("folder", tmp_path, channels=True) == "folder: channels must be 1 or 3, got True"
    message = data_error("folder", tmp_path, size=10**7)
    assert message.startswith("folder: size=10000000 needs about ") and message.endswith("; lower size")


def test_loader_options_of_the_wrong_kind_are_data_errors():
    assert data_error("digits", val_fraction="a") == "val_fraction must be a number in [0, 1), got 'a'"
    assert data_error("digits", root=3) == "digits: root must be a path, got 3"
    assert data_error(["digits"]) == "unknown dataset ['digits']; expected one of digits, mnist, cifar10, folder, npz"


@pytest.mark.parametrize("batch_size", [0, -4, 2.5])
def test_batch_stream_refuses_a_non_positive_batch_size(batch_size):
    dataset = ImageDataset(torch.zeros(10, 1, 2, 2), None, 2, "tiny", "train")
    with pytest.raises(DataError, match=f"batch_size must be a positive integer, got {batch_size}"):
        BatchStream(dataset, batch_size)
