"""AdaCluster Compare: how far the sparse run's decoded video moved from the dense one (PSNR / SSIM
per frame, a chart and an amplified difference video). The metrics live in compare_metrics.py,
the chart in compare_plot.py."""
import json

import comfy.model_management as mm
from comfy_api.latest import io, ui

from . import compare_metrics as cm
from . import patcher
from .compare_plot import plot_image
from .io_types import CATEGORY

# ui payload keys (for web extensions): "text" (PreviewText), "images" (the chart preview) and
# "adacluster_compare" (a one-element list holding the JSON report).
UI_COMPARE_KEY = "adacluster_compare"


class AdaClusterCompare(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AdaClusterCompare",
            display_name="AdaCluster Compare",
            category=CATEGORY,
            description="A/B quality check: the decoded frames of a dense run (reference) and of the sparse run "
                        "(test), same seed and prompt. Per-frame PSNR and SSIM (computed in torch), their means, a chart "
                        f"and an amplified difference video. PSNR is capped at {cm.PSNR_CAP_DB:g} dB (identical "
                        "frames). The AdaCluster paper reports 29-31 dB vs dense; below ~25 dB look at the "
                        "probe's worst layers.",
            inputs=[
                io.Image.Input("reference", tooltip="Decoded frames of the dense run (AdaCluster enabled = false)."),
                io.Image.Input("test", tooltip="Decoded frames of the sparse run: same seed, prompt, size and length."),
                io.Float.Input("diff_gain", default=8.0, min=1.0, max=100.0, step=0.5,
                               tooltip="The difference video shows |reference - test| times this (black = no change)."),
                io.Model.Input("model", optional=True,
                               tooltip="Optional: the AdaCluster-patched model of the test run; its preset, density "
                                       "and FLOPs saved go into the report next to the quality numbers."),
            ],
            outputs=[
                io.Float.Output(display_name="psnr_mean"),
                io.Float.Output(display_name="ssim_mean"),
                io.String.Output(display_name="text"),
                io.String.Output(display_name="json"),
                io.Image.Output(display_name="plot"),
                io.Image.Output(display_name="difference"),
            ],
            is_output_node=True,
        )

    # diff_gain: ComfyUI's own min / max check lets NaN through (every comparison with NaN is false),
    # so it is checked here, bounds included (naming it here switches ComfyUI's check off for it)
    @classmethod
    def validate_inputs(cls, diff_gain=None):
        if diff_gain is None:   # linked: checked in execute
            return True
        try:
            cm.check_gain(diff_gain)
        except cm.CompareInputError as e:
            return f"AdaCluster Compare: {e}"
        return True

    @classmethod
    def execute(cls, reference, test, diff_gain=8.0, model=None) -> io.NodeOutput:
        try:
            cm.check_inputs(reference, test)
            gain = cm.check_gain(diff_gain)
            cm.check_finite(reference, test)   # a NaN / Inf frame: an error naming the input and frame
            psnr, ssim = cm.frame_metrics(reference, test, device=mm.get_torch_device())
            report = cm.build_report(psnr, ssim,
                                     cm.sparse_run_summary(patcher.run_stats(model)) if model else None)
        except cm.CompareInputError as e:
            raise ValueError(f"AdaCluster Compare: {e}") from None
        report["ssim_window"] = cm.ssim_window(reference.shape[1], reference.shape[2])
        report_json = json.dumps(report, allow_nan=False)   # no NaN / Inf reaches the UI or /history
        text = cm.format_report(report)
        plot = plot_image(psnr, ssim)
        diff = cm.difference_video(reference, test, gain)
        payload = dict(ui.PreviewText(text).as_dict())
        try:
            payload.update(ui.PreviewImage(plot, cls=cls).as_dict())
        except Exception:  # preview saving is cosmetic
            pass
        payload[UI_COMPARE_KEY] = [report]
        return io.NodeOutput(report["psnr_mean_db"], report["ssim_mean"], text, report_json, plot, diff,
                             ui=payload)
