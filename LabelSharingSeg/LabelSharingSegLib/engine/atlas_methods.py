"""The ways drawn atlas labels can be segmented on a scan (names shared by the engine, CLI and Slicer).

* ``register-deformable`` - carry the labels by affine + deformable registration (propagation.py);
* ``register-affine``     - carry them by affine registration only;
* ``lcs``                 - condition the bundle's LCS network on each label (Ma et al. 2022);
* ``lcs-refine``          - deformable propagation corrected by a refine network (bundles with an
                            ``lcs_refine`` network, networks.RefineLCSNet).

The default is the best measured on the demo's held-out brains: 116 fine AAL labels drawn on the atlas, never
trained, and 133 Neuromorphometrics labels (docs/DEMO.md): ``register-deformable`` for every 3D bundle. The
shipped refine network ties with it (AAL 0.641 vs 0.636 through ``lsseg evaluate``, 0.640 vs 0.624 on the real
whole-head scan; Neuromorphometrics 0.552 vs 0.558), so ``lcs-refine`` is offered, not the default. 2D bundles
(no registration) keep ``lcs``.
Kept free of torch so command-line help stays fast.
"""

ATLAS_METHODS = ("register-deformable", "register-affine", "lcs", "lcs-refine")
DEFAULT_ATLAS_METHOD = "register-deformable"
REFINE_ATLAS_METHOD = "lcs-refine"


def default_atlas_method(arch: str, spatial_dims: int) -> str:
    """The default method for a bundle's network architecture and dimensionality (the architecture decides
    nothing today: kept so a refine network that measures better can become its bundles' default)."""
    return DEFAULT_ATLAS_METHOD if spatial_dims == 3 else "lcs"


ATLAS_METHOD_TITLES = {
    "register-deformable": "Deformable registration (affine + demons)",
    "register-affine": "Affine registration",
    "lcs": "LCS network (Ma et al. 2022)",
    "lcs-refine": "Deformable registration refined by the network",
}


def atlas_methods_for(arch: str, spatial_dims: int) -> tuple[str, ...]:
    """The methods a bundle can run (its network runs only the method made for it), its default first."""
    if spatial_dims != 3:
        return ("lcs",)
    network = REFINE_ATLAS_METHOD if arch == "lcs_refine" else "lcs"
    default = default_atlas_method(arch, spatial_dims)
    others = [m for m in ("register-deformable", "register-affine", network) if m != default]
    return (default, *others)
