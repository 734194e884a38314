"""AdaCluster Stats: what the sparse attention did in the last run of a patched model."""
from comfy_api.latest import io, ui

from . import patcher, report
from .io_types import CATEGORY

# ui payload keys (for web extensions): "text" (PreviewText, one string), "images" + "animated"
# (the heatmap preview), "adacluster_stats" (a one-element list holding the JSON-able stats dict).
UI_STATS_KEY = "adacluster_stats"
# Where the quality side of a run lives (the JSON payload's "quality_check" entry).
QUALITY_CHECK = ("PSNR/SSIM of this run's decoded frames vs a dense run at the same seed: AdaCluster Compare "
                 "(bundled workflow 'Wan 2.1 A/B check'; README 'Check quality on your model')")


class AdaClusterStats(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AdaClusterStats",
            display_name="AdaCluster Stats",
            category=CATEGORY,
            description="Connect the patched MODEL and the sampled LATENT (so it runs after sampling): shows "
                        "sparse vs dense calls with reasons, density per layer x step, cluster counts, estimated "
                        "attention FLOPs saved and attention wall time, plus a layers x steps density heatmap.",
            inputs=[
                io.Model.Input("model", tooltip="The model from AdaCluster Sparse Attention that the sampler used."),
                io.Latent.Input("samples", tooltip="The sampler's output (only orders this node after sampling)."),
            ],
            outputs=[io.String.Output(display_name="text"), io.Image.Output(display_name="heatmap")],
            is_output_node=True,
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def execute(cls, model, samples) -> io.NodeOutput:
        d = patcher.run_stats(model)
        text = report.format_stats(d)
        img = report.heatmap_image(d)
        payload = dict(ui.PreviewText(text).as_dict())
        try:
            payload.update(ui.PreviewImage(img, cls=cls).as_dict())
        except Exception:  # preview saving is cosmetic
            pass
        js = report.stats_json(d)
        js.setdefault("quality_check", QUALITY_CHECK)
        payload[UI_STATS_KEY] = [js]
        return io.NodeOutput(text, img, ui=payload)

    @classmethod
    def fingerprint_inputs(cls, model, samples):
        return float("nan")  # always re-run: the stats belong to the latest run
