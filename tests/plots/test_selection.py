from repgeom.plots.selection import (
    condition_label,
    condition_styles,
    final_checkpoints,
    layerwise_conditions,
    order_conditions,
    shown_checkpoints,
    step_series,
)


def test_order_puts_base_by_k_controls_after_their_k_then_checkpoints_by_step(synthetic):
    STEPS = synthetic.STEPS
    order = order_conditions(["ft-lora-epoch1", "5shot", "ft-lora-step1", "10shot", "5shot-gibberish", "0shot",
                              "ft-lora-step8", "2shot"], STEPS)
    assert order == ["0shot", "2shot", "5shot", "5shot-gibberish", "10shot", "ft-lora-step1", "ft-lora-epoch1",
                     "ft-lora-step8"]


def test_step_series_dedupes_each_step_keeping_the_epoch_name(synthetic):
    (method, series), = step_series(synthetic.CONDITIONS, synthetic.STEPS).items()
    assert method == "lora"
    assert [step for step, _ in series] == [1, 2, 3, 5, 8, 13, 16, 20, 24, 32]
    assert dict(series)[8] == "ft-lora-epoch1" and dict(series)[32] == "ft-lora-epoch4"


def test_layerwise_figures_show_base_shots_and_epoch_checkpoints_not_controls(synthetic):
    CONDITIONS, STEPS = synthetic.CONDITIONS, synthetic.STEPS
    assert layerwise_conditions(CONDITIONS, STEPS) == [
        "0shot", "1shot", "2shot", "5shot", "ft-lora-epoch1", "ft-lora-epoch2", "ft-lora-epoch3", "ft-lora-epoch4"]
    assert final_checkpoints(CONDITIONS, STEPS) == {"lora": "ft-lora-epoch4"}


def test_many_checkpoints_are_thinned_keeping_the_last():
    steps = {f"ft-pt-epoch{e}": 10 * e for e in range(1, 11)}
    shown = shown_checkpoints(list(steps), steps, max_checkpoints=4)["pt"]
    assert len(shown) == 4 and shown[0] == "ft-pt-epoch1" and shown[-1] == "ft-pt-epoch10"


def test_method_without_epochs_shows_its_steps_and_unknown_steps_fall_back_to_names():
    names = ["0shot", "ft-a-step1", "ft-a-step4", "ft-b-epoch1", "ft-b-epoch2"]
    assert shown_checkpoints(names, {}) == {"a": ["ft-a-step1", "ft-a-step4"], "b": ["ft-b-epoch1", "ft-b-epoch2"]}
    assert final_checkpoints(names, {}) == {"a": "ft-a-step4", "b": "ft-b-epoch2"}
    assert step_series(names, {}) == {"a": [(1, "ft-a-step1"), (4, "ft-a-step4")]}  # epochs need the mapping


def test_styles_colour_families_and_labels(synthetic):
    STEPS = synthetic.STEPS
    styles = condition_styles(["0shot", "5shot", "5shot-shuffled", "ft-lora-epoch1", "ft-lora-epoch4"], STEPS)
    assert styles["0shot"]["linestyle"] == "-" and styles["ft-lora-epoch1"]["linestyle"] == "--"
    assert styles["5shot-shuffled"]["linestyle"] == ":"
    # darker with more shots / later checkpoints: lower luminance
    luminance = lambda name: sum(styles[name]["color"][:3])  # noqa: E731
    assert luminance("5shot") < luminance("0shot") and luminance("ft-lora-epoch4") < luminance("ft-lora-epoch1")
    assert styles["ft-lora-epoch4"]["color"][0] > styles["ft-lora-epoch4"]["color"][2]  # orange family, not blue
    assert condition_label("ft-lora-epoch2", STEPS) == "ft-lora-epoch2 (step 16)"
    assert condition_label("ft-lora-step3", STEPS) == "ft-lora-step3" and condition_label("2shot", STEPS) == "2shot"
