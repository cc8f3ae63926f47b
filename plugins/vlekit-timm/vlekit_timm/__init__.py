"""vlekit-timm: any timm ViT-family model as a vlekit vision encoder (``timm-vit``).

vlekit imports :mod:`vlekit_timm.timm_vit` lazily through the ``vlekit.vision_encoders`` entry point::

    import vlekit
    model = vlekit.build_model(vision_encoder={"name": "timm-vit", "model_name": "deit_base_patch16_384"})
"""
