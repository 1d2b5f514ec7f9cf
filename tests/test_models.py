"""The agent: output shapes for every --posemb and encoder, and LSTM state handling."""
import pytest
import torch

from torchbeast.models import ENCODERS, POSEMBS, MemoryAgent


def make_inputs(T, B, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        frame=torch.randint(0, 256, (T, B, 3, 64, 64), dtype=torch.uint8, generator=g),
        reward=torch.randn(T, B, generator=g),
        done=torch.zeros(T, B, dtype=torch.bool),
        last_action=torch.randint(0, 6, (T, B), generator=g),
        position=torch.rand(T, B, 2, generator=g),
        noisy_position=torch.rand(T, B, 2, generator=g),
        heading=torch.randn(T, B, 2, generator=g),
    )


@pytest.mark.parametrize("posemb", list(POSEMBS))
@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_output_shapes(posemb, encoder):
    torch.manual_seed(0)
    model = MemoryAgent(num_actions=6, posemb=posemb, encoder=encoder, hidden_size=32)
    T, B = 3, 2
    outputs, state = model(make_inputs(T, B), model.initial_state(B))
    assert outputs["policy_logits"].shape == (T, B, 6)
    assert outputs["baseline"].shape == (T, B)
    assert outputs["action"].shape == (T, B)
    assert outputs["action"].dtype == torch.int64
    assert [s.shape for s in state] == [(1, B, 32), (1, B, 32)]


def test_posemb_uses_the_right_position():
    torch.manual_seed(0)
    inputs = make_inputs(2, 2)
    for posemb, key, other in (("gt", "position", "noisy_position"), ("noisygt", "noisy_position", "position")):
        model = MemoryAgent(num_actions=6, posemb=posemb, hidden_size=16)
        base, _ = model(inputs, model.initial_state(2))
        changed = dict(inputs, **{other: inputs[other] + 1.0})
        same, _ = model(changed, model.initial_state(2))
        torch.testing.assert_close(base["baseline"], same["baseline"])
        changed = dict(inputs, **{key: inputs[key] + 1.0})
        diff, _ = model(changed, model.initial_state(2))
        assert not torch.allclose(base["baseline"], diff["baseline"])


@pytest.mark.parametrize("num_lstm_layers", [1, 2])
def test_unroll_at_once_equals_step_by_step_with_carried_state(num_lstm_layers):
    """Steps of T=1 take the actors' lstm_cell path; whole unrolls take nn.LSTM's: same numbers."""
    torch.manual_seed(0)
    model = MemoryAgent(num_actions=6, posemb="gt", hidden_size=16, num_lstm_layers=num_lstm_layers)
    T, B = 6, 3
    inputs = make_inputs(T, B)
    inputs["done"][2, 1] = True
    inputs["done"][4, 0] = True
    whole, whole_state = model(inputs, model.initial_state(B))
    state = model.initial_state(B)
    for t in range(T):
        step = {k: v[t : t + 1] for k, v in inputs.items()}
        out, state = model(step, state)
        torch.testing.assert_close(out["baseline"][0], whole["baseline"][t])
        torch.testing.assert_close(out["policy_logits"][0], whole["policy_logits"][t])
    for a, b in zip(state, whole_state):
        torch.testing.assert_close(a, b)


def test_done_resets_the_state():
    """An episode that starts at step t gives the same outputs whatever came before it."""
    torch.manual_seed(0)
    model = MemoryAgent(num_actions=6, hidden_size=16)
    T, B = 5, 1
    inputs = make_inputs(T, B)
    inputs["done"][2, 0] = True
    after_history, _ = model(inputs, model.initial_state(B))
    fresh_inputs = {k: v[2:] for k, v in inputs.items()}
    fresh, _ = model(fresh_inputs, model.initial_state(B))
    torch.testing.assert_close(after_history["baseline"][2:], fresh["baseline"])
    # And without the reset, history matters.
    inputs["done"][2, 0] = False
    no_reset, _ = model(inputs, model.initial_state(B))
    assert not torch.allclose(no_reset["baseline"][2:], fresh["baseline"])


def test_no_lstm_is_feed_forward():
    torch.manual_seed(0)
    model = MemoryAgent(num_actions=6, use_lstm=False, hidden_size=16)
    assert model.initial_state(4) == ()
    outputs, state = model(make_inputs(2, 4), ())
    assert outputs["baseline"].shape == (2, 4) and state == ()


def test_unknown_posemb_or_encoder():
    with pytest.raises(ValueError, match="posemb"):
        MemoryAgent(num_actions=6, posemb="bogus")
    with pytest.raises(ValueError, match="encoder"):
        MemoryAgent(num_actions=6, encoder="bogus")


def test_large_frames_are_averaged_down_to_64():
    """HD and Top ids render 256x256: the agent pools them to the encoder's 64x64."""
    torch.manual_seed(0)
    model = MemoryAgent(num_actions=6, encoder="small", hidden_size=16)
    small = make_inputs(2, 1)
    large = dict(small, frame=small["frame"].repeat_interleave(4, dim=-1).repeat_interleave(4, dim=-2))
    a, _ = model(small, model.initial_state(1))
    b, _ = model(large, model.initial_state(1))
    torch.testing.assert_close(a["baseline"], b["baseline"])
