"""The embedded `shapes` dataset: procedural, anti-aliased, one shape per image.

Every image is a pure function of six discrete factors, each sampled uniformly from a grid of
levels (the dSprites / 3dshapes convention, so disentanglement metrics such as MIG or the
FactorVAE score can read the ground truth directly):

    factor     levels  meaning
    shape      3       square, circle, triangle (the class label; CLASS_NAMES)
    colour     6       hues 0, 60, ..., 300 deg at full saturation and value (red first)
    scale      5       circumradius 0.20, 0.24, 0.28, 0.32, 0.36 x image size
    rotation   8       k/8 of the shape's symmetry period: 11.25 deg steps for the square,
                       15 deg for the triangle; the circle ignores it
    x, y       8 each  centre on a regular grid, inset so that even the largest shape at any
                       rotation leaves the outermost pixel row/column pure background

3 * 6 * 5 * 8 * 8 * 8 = 46,080 distinct images, so a 50k sample repeats some of them, and the
train and test splits (different seeds) share images: they are two samples of one distribution.

Rendering. Each shape is a signed distance function (SDF) in pixel units, negative inside: a circle
is |p| - R; a regular k-gon with inradius rho is max_i <p, n_i> - rho over its k side normals n_i
(exact inside, mitred outside). A pixel's coverage is clamp(0.5 - sdf, 0, 1) at its centre, a
one-pixel linear ramp across the edge, which is the anti-aliasing. Pixels blend the shape colour
over a fixed dark background: rgb = bg + coverage * (colour - bg). Sizes are fractions of the
image size, so 16..128 px renders the same scene at different resolutions. The square and triangle
share the circumradius r (square half-side r cos 45, triangle inradius r cos 60, apex up at rotation
0); the circle has radius 0.8 r, so it has the square's area.

Pairing. style="outline" draws the band of the filled shape within `stroke` px of its edge:
coverage = fill(sdf) - fill(sdf + stroke), i.e. the filled shape minus the shape eroded by the
stroke (1.5 px at 32x32, scaled with the image size, at least 1 px). It lies inside the filled
shape, equals it on the anti-aliased rim and has the same centroid. make_paired_shapes renders the
same factors in both styles: domain A = filled, domain B = outline, so each A image has a known
ground-truth translation.
"""

from __future__ import annotations

import math

import torch

FACTOR_NAMES: tuple[str, ...] = ("shape", "colour", "scale", "rotation", "x", "y")
FACTOR_SIZES: tuple[int, ...] = (3, 6, 5, 8, 8, 8)
CLASS_NAMES: tuple[str, ...] = ("square", "circle", "triangle")

BACKGROUND = (24, 24, 32)
COLOURS = ((255, 0, 0), (255, 255, 0), (0, 255, 0), (0, 255, 255), (0, 0, 255), (255, 0, 255))
SCALES = (0.20, 0.24, 0.28, 0.32, 0.36)  # circumradius / image size
CIRCLE_RADIUS = 0.8  # circle radius / circumradius r: pi (0.8 r)^2 ~= (2 r cos 45)^2
SIDES = (4, 0, 3)  # polygon sides per shape; 0 = circle
PHASE = (0.0, 0.0, math.pi / 2)  # first side normal at rotation 0: square axis-aligned, triangle apex up
AA_REACH = 1.0  # px beyond the shape where coverage can be > 0 (0.5 px ramp, mitred to 1 px at 60 deg)
PIXELS_PER_CHUNK = 1 << 22  # bounds render's working memory to a few tens of MB


def check_image_size(image_size: int) -> None:
    """Raise ValueError unless image_size is a power of two in 16..128."""
    if not isinstance(image_size, int) or image_size not in (16, 32, 64, 128):
        raise ValueError(f"shapes image size must be a power of two in 16..128, got {image_size!r}")


def stroke_width(image_size: int) -> float:
    """Outline stroke in pixels: 1.5 px at 32x32, proportional to size, at least 1 px."""
    return max(1.0, 1.5 * image_size / 32)


def position_levels(image_size: int) -> torch.Tensor:
    """Centre coordinates in pixels for the x / y levels, inset so every shape stays inside."""
    margin = max(SCALES) * image_size + AA_REACH + 0.5  # + 0.5: border pixel centres stay background
    return torch.linspace(margin, image_size - margin, FACTOR_SIZES[4])


def sample_factors(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, K) int64 factor levels, each uniform over its FACTOR_SIZES range."""
    columns = [torch.randint(size, (n,), generator=generator) for size in FACTOR_SIZES]
    return torch.stack(columns, dim=1)


def _check_factors(factors: torch.Tensor) -> None:
    """Raise ValueError unless factors is an (n, K) integer tensor within FACTOR_SIZES."""
    if factors.ndim != 2 or factors.shape[1] != len(FACTOR_SIZES) or factors.is_floating_point():
        raise ValueError(f"factors must be an (n, {len(FACTOR_SIZES)}) integer tensor, got {tuple(factors.shape)}")
    sizes = torch.tensor(FACTOR_SIZES, device=factors.device)
    if len(factors) and ((factors < 0) | (factors >= sizes)).any():
        raise ValueError(f"factor levels out of range; sizes are {dict(zip(FACTOR_NAMES, FACTOR_SIZES))}")


def _polygon_sdf(px: torch.Tensor, py: torch.Tensor, sides: int, phase: float,
                 inradius: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Mitred SDF of regular polygons, max_i <p, n_i> - inradius: px (m,1,S), py (m,S,1) -> (m,S,S)."""
    dist = None
    for i in range(sides):
        angle = (theta + phase + 2 * math.pi * i / sides).view(-1, 1, 1)
        proj = px * torch.cos(angle) + py * torch.sin(angle)
        dist = proj if dist is None else torch.maximum(dist, proj)
    return dist - inradius.view(-1, 1, 1)


def _sdf(factors: torch.Tensor, image_size: int) -> torch.Tensor:
    """Signed distance in pixels (negative inside) to each image's shape: (n, K) -> (n, S, S)."""
    shape, scale, rotation, x, y = factors[:, [0, 2, 3, 4, 5]].unbind(1)
    device = factors.device
    positions = position_levels(image_size).to(device)
    radius = torch.tensor(SCALES, device=device)[scale] * image_size  # circumradius in px, (n,)
    coords = torch.arange(image_size, device=device, dtype=torch.float32) + 0.5  # pixel centres
    px = coords.view(1, 1, -1) - positions[x].view(-1, 1, 1)  # (n, 1, S)
    py = coords.view(1, -1, 1) - positions[y].view(-1, 1, 1)  # (n, S, 1)
    sdf = torch.empty(len(factors), image_size, image_size, device=device)
    for s, sides in enumerate(SIDES):
        idx = (shape == s).nonzero().squeeze(1)
        if len(idx) == 0:
            continue
        if sides == 0:
            sdf[idx] = torch.hypot(px[idx], py[idx]) - CIRCLE_RADIUS * radius[idx].view(-1, 1, 1)
        else:
            theta = rotation[idx].float() * (2 * math.pi / sides / FACTOR_SIZES[3])
            inradius = radius[idx] * math.cos(math.pi / sides)
            sdf[idx] = _polygon_sdf(px[idx], py[idx], sides, PHASE[s], inradius, theta)
    return sdf


def _coverage(sdf: torch.Tensor, style: str, image_size: int) -> torch.Tensor:
    """Anti-aliased coverage in [0, 1] from the SDF: a 1 px ramp across the edge."""
    filled = (0.5 - sdf).clamp_(0, 1)
    if style == "filled":
        return filled
    eroded = (0.5 - sdf - stroke_width(image_size)).clamp_(0, 1)  # the shape shrunk by the stroke
    return filled - eroded


def _render_chunk(factors: torch.Tensor, image_size: int, style: str) -> torch.Tensor:
    """Render one chunk: (n, K) -> uint8 (n, 3, S, S)."""
    coverage = _coverage(_sdf(factors, image_size), style, image_size).unsqueeze(1)  # (n, 1, S, S)
    background = torch.tensor(BACKGROUND, dtype=torch.float32, device=factors.device).view(1, 3, 1, 1)
    colour = torch.tensor(COLOURS, dtype=torch.float32, device=factors.device)[factors[:, 1]]
    image = background + coverage * (colour.view(-1, 3, 1, 1) - background)
    return image.round_().to(torch.uint8)


def render(factors: torch.Tensor, image_size: int = 32, style: str = "filled") -> torch.Tensor:
    """Draw the images for the given factor levels: (n, K) int64 -> uint8 (n, 3, S, S)."""
    check_image_size(image_size)
    _check_factors(factors)
    if style not in ("filled", "outline"):
        raise ValueError(f"style must be 'filled' or 'outline', got {style!r}")
    chunk = max(1, PIXELS_PER_CHUNK // image_size**2)
    out = torch.empty(len(factors), 3, image_size, image_size, dtype=torch.uint8, device=factors.device)
    for start in range(0, len(factors), chunk):
        out[start:start + chunk] = _render_chunk(factors[start:start + chunk], image_size, style)
    return out


def make_shapes(n: int, image_size: int = 32, seed: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n filled shapes: (images uint8 (n, 3, S, S), labels int64 (n,), factors int64 (n, K))."""
    check_image_size(image_size)
    factors = sample_factors(n, torch.Generator().manual_seed(seed))
    return render(factors, image_size), factors[:, 0].clone(), factors


def make_paired_shapes(n: int, image_size: int = 32, seed: int = 0
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paired domains with identical factors: (filled A, outline B, labels (n,), factors (n, K))."""
    check_image_size(image_size)
    factors = sample_factors(n, torch.Generator().manual_seed(seed))
    domain_a = render(factors, image_size, style="filled")
    domain_b = render(factors, image_size, style="outline")
    return domain_a, domain_b, factors[:, 0].clone(), factors
