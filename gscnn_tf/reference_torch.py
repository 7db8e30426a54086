"""The reference WideResNet-38 GSCNN in PyTorch (the `convert` extra), described independently
of our import mapping: its state-dict key names and shapes, random weights, its forward pass
written with torch.nn.functional from the facts in docs/method.md / docs/porting.md, and one
SGD training step with the four loss terms. The import tests check `gscnn-tf
import-reference` against it; benchmarks/reference.py times it against our model.
"""


import cv2
import numpy as np

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# (module, blocks, widths, dilation) of mod2..mod7 at output stride 8; mod4's first block /2.
WRN = ((2, 3, (128, 128), 1), (3, 3, (256, 256), 1), (4, 6, (512, 512), 1),
       (5, 3, (512, 1024), 2), (6, 1, (512, 1024, 2048), 4), (7, 1, (1024, 2048, 4096), 4))
ATROUS = (12, 24, 36)


def reference_shapes(num_classes=19):
    """{key: shape} of the reference checkpoint (without `module.`)."""
    shapes = {}

    def conv(key, cout, cin, k, bias=False):
        shapes[f"{key}.weight"] = (cout, cin, k, k)
        if bias:
            shapes[f"{key}.bias"] = (cout,)

    def bn(key, c):
        shapes.update({f"{key}.{t}": (c,) for t in ("weight", "bias", "running_mean",
                                                     "running_var")})
        shapes[f"{key}.num_batches_tracked"] = ()

    def conv_bn(key, index, cout, cin, k):
        """An nn.Sequential's bias-free conv at `key.index` and its BN at `key.index + 1`."""
        conv(f"{key}.{index}", cout, cin, k)
        bn(f"{key}.{index + 1}", cout)

    conv("mod1.conv1", 64, 3, 3)
    cin = 64
    for m, blocks, widths, _ in WRN:
        for b in range(1, blocks + 1):
            p = f"mod{m}.block{b}"
            bn(f"{p}.bn1.0", cin)
            if b == 1:
                conv(f"{p}.proj_conv", widths[-1], cin, 1)
            kernels = (3, 3) if len(widths) == 2 else (1, 3, 1)
            c = cin
            for k, (w, ks) in enumerate(zip(widths, kernels), 1):
                if k > 1:
                    bn(f"{p}.convs.bn{k}.0", c)
                conv(f"{p}.convs.conv{k}", w, c, ks)
                c = w
            cin = widths[-1]
    for i, c in ((1, 64), (3, 256), (4, 512), (7, 4096)):
        conv(f"dsn{i}", 1, c, 1, bias=True)
    for i, (c, out) in enumerate(((64, 32), (32, 16), (16, 8)), 1):
        conv(f"res{i}.conv1", c, c, 3)
        bn(f"res{i}.bn1", c)
        conv(f"res{i}.conv2", c, c, 3)
        bn(f"res{i}.bn2", c)
        conv(f"d{i}", out, c, 1, bias=True)
        conv(f"gate{i}", out, out, 1)
        bn(f"gate{i}._gate_conv.0", out + 1)
        conv(f"gate{i}._gate_conv.1", out + 1, out + 1, 1, bias=True)
        conv(f"gate{i}._gate_conv.3", 1, out + 1, 1, bias=True)
        bn(f"gate{i}._gate_conv.4", 1)
    conv("fuse", 1, 8, 1)
    conv("cw", 1, 2, 1)
    conv_bn("aspp.img_conv", 0, 256, 4096, 1)
    conv_bn("aspp.edge_conv", 0, 256, 1, 1)
    for i in range(4):
        conv_bn(f"aspp.features.{i}", 0, 256, 4096, 1 if i == 0 else 3)
    conv("bot_fine", 48, 128, 1)
    conv("bot_aspp", 256, 1536, 1)
    conv_bn("final_seg", 0, 256, 304, 3)
    conv_bn("final_seg", 3, 256, 256, 3)
    conv("final_seg.6", num_classes, 256, 1)
    return shapes


def _torch():
    """(torch, torch.nn.functional): the `convert` extra."""
    from gscnn_tf.reference_import import _import_torch

    torch = _import_torch()
    import torch.nn.functional as F

    return torch, F


def random_state_dict(num_classes=19, seed=0):
    """Random reference weights: He-scaled kernels, BN statistics near 1 / 0."""
    torch, _ = _torch()
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in reference_shapes(num_classes).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000, dtype=torch.int64)
        elif len(shape) == 4:
            state[key] = torch.randn(shape, generator=g) * (2.0 / np.prod(shape[1:])) ** 0.5
        elif key.endswith(("running_var", ".weight")):
            state[key] = 0.5 + torch.rand(shape, generator=g)
        else:
            state[key] = 0.1 * torch.randn(shape, generator=g)
    return state


def forward(sd, images):
    """Reference outputs for RGB 0..255 float images `[B, H, W, 3]` (numpy):
    (seg logits `[B, H, W, C]`, edge logits `[B, H, W, 1]`: edge_out before its sigmoid),
    numpy."""
    torch, _ = _torch()
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(images, np.float32)).permute(0, 3, 1, 2)
        seg, edge_logits = forward_torch(sd, x)
    return seg.permute(0, 2, 3, 1).numpy(), edge_logits.permute(0, 2, 3, 1).numpy()


def forward_torch(sd, x, training=False):
    """The same forward pass on a torch tensor `[B, 3, H, W]` RGB 0..255: (seg logits
    `[B, C, H, W]`, edge logits `[B, 1, H, W]`), torch tensors. `training`: batch norm uses
    the batch's statistics and updates the running ones in `sd` (momentum 0.1), as the
    reference trains; gradients flow to the tensors of `sd` that require them."""
    torch, F = _torch()

    def conv(x, key, stride=1, padding=0, dilation=1):
        return F.conv2d(x, sd[f"{key}.weight"], sd.get(f"{key}.bias"), stride, padding,
                        dilation)

    def bn(x, key):
        return F.batch_norm(x, sd[f"{key}.running_mean"], sd[f"{key}.running_var"],
                            sd[f"{key}.weight"], sd[f"{key}.bias"], training, 0.1, 1e-5)

    def up(x, size, align_corners=True):
        return F.interpolate(x, size, mode="bilinear", align_corners=align_corners)

    def block(x, p, widths, stride, dil):
        pre = F.relu(bn(x, f"{p}.bn1.0"))
        short = conv(pre, f"{p}.proj_conv", stride) if f"{p}.proj_conv.weight" in sd else x
        if len(widths) == 2:
            y = conv(pre, f"{p}.convs.conv1", stride, dil, dil)
            y = conv(F.relu(bn(y, f"{p}.convs.bn2.0")), f"{p}.convs.conv2", 1, dil, dil)
        else:
            y = conv(pre, f"{p}.convs.conv1", stride)
            y = conv(F.relu(bn(y, f"{p}.convs.bn2.0")), f"{p}.convs.conv2", 1, dil, dil)
            y = conv(F.relu(bn(y, f"{p}.convs.bn3.0")), f"{p}.convs.conv3")
        return y + short

    def basic(x, p):
        y = F.relu(bn(conv(x, f"{p}.conv1", 1, 1), f"{p}.bn1"))
        return F.relu(bn(conv(y, f"{p}.conv2", 1, 1), f"{p}.bn2") + x)

    def gate(x, g, p):
        a = bn(torch.cat([x, g], 1), f"{p}._gate_conv.0")
        a = conv(F.relu(conv(a, f"{p}._gate_conv.1")), f"{p}._gate_conv.3")
        a = torch.sigmoid(bn(a, f"{p}._gate_conv.4"))
        return F.conv2d(x * (a + 1), sd[f"{p}.weight"])

    def cbr(x, key, padding=0, dilation=1):
        return F.relu(bn(conv(x, f"{key}.0", 1, padding, dilation), f"{key}.1"))

    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    x = (x / 255.0 - mean) / std
    size = x.shape[2:]
    m = {1: conv(x, "mod1.conv1", 1, 1)}
    h = m[1]
    for mod, blocks, widths, dil in WRN:
        if mod in (2, 3):
            h = F.max_pool2d(h, 3, 2, 1)
        for b in range(1, blocks + 1):
            h = block(h, f"mod{mod}.block{b}", widths, 2 if (mod, b) == (4, 1) else 1, dil)
        m[mod] = h
    s = {i: up(conv(m[i], f"dsn{i}"), size) for i in (3, 4, 7)}
    ss = m[1]
    for i, tap in enumerate((3, 4, 7), 1):
        ss = gate(conv(basic(ss, f"res{i}"), f"d{i}"), s[tap], f"gate{i}")
    edge_logits = up(conv(ss, "fuse"), size)
    edge_out = torch.sigmoid(edge_logits)
    im = x.detach().permute(0, 2, 3, 1).numpy().astype(np.uint8)
    canny = torch.from_numpy(np.stack([cv2.Canny(i, 10, 100) for i in im])[:, None])
    acts = torch.sigmoid(conv(torch.cat([edge_out, canny.float()], 1), "cw"))
    m7 = m[7]
    pooled = cbr(m7.mean((2, 3), keepdim=True), "aspp.img_conv")
    branches = [up(pooled, m7.shape[2:]), cbr(up(acts, m7.shape[2:]), "aspp.edge_conv"),
                cbr(m7, "aspp.features.0")]
    branches += [cbr(m7, f"aspp.features.{i}", r, r) for i, r in enumerate(ATROUS, 1)]
    dec = up(conv(torch.cat(branches, 1), "bot_aspp"), m[2].shape[2:])
    dec = torch.cat([conv(m[2], "bot_fine"), dec], 1)
    dec = F.relu(bn(conv(dec, "final_seg.0", 1, 1), "final_seg.1"))
    dec = F.relu(bn(conv(dec, "final_seg.3", 1, 1), "final_seg.4"))
    seg = up(conv(dec, "final_seg.6"), size, align_corners=False)
    return seg, edge_logits


def _boundary(maps, sigma=1.0):
    """|Sobel(G_sigma * maps)| / sqrt(2) per channel of `[B, K, H, W]` (replicate padding)."""
    torch, F = _torch()
    k = maps.shape[1]
    r = np.arange(7) - 3.0
    g = np.exp(-r ** 2 / (2 * sigma ** 2))
    gauss = torch.tensor(np.outer(g, g) / np.outer(g, g).sum(), dtype=torch.float32)
    sobel_x = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    blurred = F.conv2d(F.pad(maps, (3, 3, 3, 3), mode="replicate"),
                       gauss.expand(k, 1, 7, 7), groups=k)
    padded = F.pad(blurred, (1, 1, 1, 1), mode="replicate")
    dx = F.conv2d(padded, sobel_x.expand(k, 1, 3, 3), groups=k)
    dy = F.conv2d(padded, sobel_x.t().expand(k, 1, 3, 3), groups=k)
    return torch.sqrt(dx * dx + dy * dy + 1e-12) / np.sqrt(2.0)


def training_loss(seg, edge_logits, labels, edges, ignore=255):
    """The reference's four terms at their weights (seg + 20 edge + att + dual, docs/method.md):
    cross-entropy, class-balanced boundary BCE, cross-entropy where sigmoid(edge) > 0.8 and
    the dual-task loss on a Gumbel-softmax relaxation. Torch tensors: seg `[B, C, H, W]`,
    edge_logits `[B, 1, H, W]`, labels int64 `[B, H, W]`, edges float `[B, H, W]`."""
    torch, F = _torch()
    loss_seg = F.cross_entropy(seg, labels, ignore_index=ignore)
    pos = edges.mean()
    weight = torch.where(edges > 0.5, 1.0 - pos, pos)
    loss_edge = F.binary_cross_entropy_with_logits(edge_logits[:, 0], edges, weight)
    attended = torch.where(torch.sigmoid(edge_logits[:, 0]) > 0.8, labels,
                           torch.full_like(labels, ignore))
    loss_att = F.cross_entropy(seg, attended, ignore_index=ignore) \
        if bool((attended != ignore).any()) else seg.sum() * 0.0
    valid = (labels != ignore).unsqueeze(1).float()
    probs = F.gumbel_softmax(seg, tau=1.0, dim=1) * valid
    onehot = F.one_hot(torch.where(labels == ignore, 0, labels), seg.shape[1])
    onehot = onehot.permute(0, 3, 1, 2).float() * valid
    zeta, zeta_hat = _boundary(probs), _boundary(onehot).detach()
    support = ((zeta > 1e-5) | (zeta_hat > 1e-5)).float().detach()
    loss_dual = (support * (zeta - zeta_hat).abs()).sum() / support.sum().clamp(min=1.0)
    return loss_seg + 20.0 * loss_edge + loss_att + loss_dual


def make_train_step(sd, lr=0.01, momentum=0.9, weight_decay=1e-4):
    """`step(images, labels, edges) -> loss` (numpy in: float `[B, H, W, 3]` 0..255, int
    `[B, H, W]`, float `[B, H, W]`): forward in training mode, the loss, backward, one SGD
    step (momentum, weight decay) on every weight of `sd` (not the BN running statistics)."""
    torch, _ = _torch()
    params = [v.requires_grad_() for k, v in sd.items()
              if v.dtype == torch.float32 and not k.endswith(("running_mean", "running_var"))]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)

    def step(images, labels, edges):
        x = torch.from_numpy(np.asarray(images, np.float32)).permute(0, 3, 1, 2)
        seg, edge_logits = forward_torch(sd, x, training=True)
        loss = training_loss(seg, edge_logits, torch.from_numpy(np.asarray(labels, np.int64)),
                             torch.from_numpy(np.asarray(edges, np.float32)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step
