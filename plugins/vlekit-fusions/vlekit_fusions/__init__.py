"""vlekit-fusions: fusion variants from the literature for vlekit.

Each module registers one fusion (and its ``tiny-`` preset) when imported; vlekit imports them lazily
through the ``vlekit.fusions`` entry points, one entry point per module, so there is nothing to
import by hand::

    import vlekit
    model = vlekit.build_model(fusion={"name": "merged-attention", "hidden_size": 256})

``merged-attention``       VisualBERT / UNITER / ViLT single stream          pooled [N, D]
``gated-cross-attention``  Flamingo tanh-gated cross-attention (text only)   pooled [N, D]
``projection-concat``      BLIP-2 / FROMAGe / LLaVA projected image prefix   pooled [N, D]
``dual-encoder``           CLIP late fusion, no cross-modal attention         pooled [N, 3D]
"""
