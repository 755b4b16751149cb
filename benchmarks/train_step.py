"""Training-step and evaluation speed of MMRL / MMRL++: fast path vs reference path.

On the real ViT-B/16 architecture (random weights: speed does not depend on them), batch 4,
for class sets shaped like DTD (47 classes, "{} texture."), SUN397 (397 multi-word names)
and ImageNet (1000 names), template "a photo of a {}." for the last two. Class names are
synthetic but have realistic word counts and BPE lengths (the fast text path's cost follows
the prompt lengths); their EOT statistics are printed and stored.

Per (classes, method, path) one fresh subprocess measures:
  * a training step (forward, backward, AdamW step): median wall seconds over ``--steps``
    steps after one warm-up step (``--ref-steps`` for the slow reference path), and the
    process CPU seconds per step (less sensitive to other processes on a shared machine);
  * peak memory of the training steps: on CUDA ``torch.cuda.max_memory_allocated``; on the
    CPU the resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``
    after setup, so it covers the steps only; it includes the model, ~0.6 GB);
  * evaluation throughput in images/s at ``--eval-batch``: the fast path encodes the class
    texts once (timed separately, ``text_once_s``) and then calls ``model.logits(images,
    text)`` per batch; the reference path calls ``reference.logits(model, images)`` per
    batch, i.e. recomputes the text tower for every batch (the straightforward way).

Usage (the documented CPU run; ~20-25 minutes on 2 cores)::

    python benchmarks/train_step.py --device cpu --threads 2 --json benchmarks/results_cpu.json

GPU: ``--device cuda --precision bf16`` (steps default 20, eval batch 250).

Precisions side by side (docs/performance.md#bf16-on-the-cpu): ``--precision fp32 bf16 bf16-autocast
--rounds 2`` runs every configuration once per precision and round, the precisions alternating,
each in a fresh process, with the load average before each; ``bf16`` is what mmrl trains with (on a
CPU the frozen weights cast to bf16 once, the loss head fp32), ``bf16-autocast`` autocast over fp32
weights. ``--compile`` also times ``torch.compile`` of the evaluation (compile seconds, images per
second after it, and its error against float64 beside the eager path's)::

    python benchmarks/train_step.py --classes 47 --methods mmrl mmrl++ --paths fast \
        --precision fp32 bf16 bf16-autocast --rounds 2 --steps 3 --eval-batch 32 --eval-methods mmrl
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name, load_text, mem_available_mb, mem_total_gb  # noqa: E402

METHODS = ("mmrl", "mmrl++")

# --------------------------------------------------------------------------- class names
DTD = ("banded blotchy braided bubbly bumpy chequered cobwebbed cracked crosshatched crystalline dotted "
       "fibrous flecked freckled frilly gauzy grid grooved honeycombed interlaced knitted lacelike lined "
       "marbled matted meshed paisley perforated pitted pleated polka-dotted porous potholed scaly smeared "
       "spiralled sprinkled stained stratified striped studded swirly veined waffled woven wrinkled "
       "zigzagged").split()
PLACES = ("abbey airport alley amphitheater aquarium aqueduct arcade archive arena armory atrium attic "
          "auditorium badlands bakery ballroom bamboo bank barn basement bathroom bayou beach bedroom "
          "berth boathouse bookstore botanical boxing bridge building butte cabin cafeteria campsite "
          "campus canal canyon carrousel casino castle catacomb cathedral cavern cemetery chalet "
          "chapel classroom cliff closet clothing cockpit coast computer conference construction "
          "corridor corral cottage courthouse courtyard creek crevasse crosswalk dam delicatessen "
          "desert diner dock dorm driveway drugstore elevator excavation factory fairway firehouse "
          "fishpond florist fountain galley garage garden gazebo geodesic glacier golf greenhouse "
          "gymnasium hangar harbor highway hospital hotel iceberg igloo islet jacuzzi jail kasbah "
          "kennel kindergarten kitchen lagoon landfill laundromat library lighthouse lobby lock "
          "marsh mausoleum medina mezzanine monastery mosque motel mountain museum nursery oast "
          "observatory ocean office orchard pagoda palace pantry parking pasture pavilion pharmacy "
          "phone pier planetarium playground plaza pond promenade pub racecourse raceway railroad "
          "rainforest reception restaurant river rope ruin sandbar sauna schoolhouse shed shoe shower "
          "skatepark slum snowfield squash stable stadium stage staircase subway supermarket swamp "
          "synagogue television temple theater thriftshop throne tower toyshop trench valley vegetable "
          "veranda veterinarians viaduct videostore village vineyard volcano waiting water waterfall "
          "wheat windmill winery wrestling yard youth").split()
PLACE_MODS = ("indoor outdoor interior exterior public natural urban vehicle cultivated broadleaf "
              "needleleaf coffee shopping music art reading recreation engine control dining living "
              "home baseball basketball football train bus car clean dirty fabric jewelry wild").split()
NOUNS = ("tench goldfish shark cock hen ostrich brambling goldfinch junco bunting robin bulbul jay "
         "magpie chickadee ouzel kite eagle vulture owl newt eft salamander axolotl frog turtle "
         "terrapin gecko iguana chameleon whiptail agama lizard alligator triceratops snake viper "
         "trilobite harvestman scorpion spider tick centipede grouse ptarmigan peacock quail "
         "partridge parrot macaw cockatoo lorikeet coucal bee-eater hornbill hummingbird jacamar "
         "toucan drake merganser goose swan tusker echidna platypus wallaby koala wombat jellyfish "
         "anemone flatworm nematode conch snail slug chiton nautilus crab lobster crayfish isopod "
         "stork spoonbill flamingo heron egret bittern crane limpkin gallinule coot bustard "
         "turnstone sandpiper redshank dowitcher oystercatcher pelican penguin albatross whale "
         "dugong sea-lion chihuahua spaniel terrier retriever setter pointer sheepdog collie "
         "schnauzer poodle Weimaraner Dinmont Airedale Pomeranian Samoyed Newfoundland dingo dhole "
         "hyena fox tabby cougar lynx leopard jaguar lion tiger cheetah bear mongoose meerkat beetle "
         "ladybug weevil fly bee ant grasshopper cricket cockroach mantis cicada leafhopper "
         "lacewing dragonfly damselfly butterfly starfish urchin cucumber rabbit hare hamster "
         "porcupine squirrel marmot beaver guinea sorrel zebra hog boar warthog hippopotamus ox "
         "bison ram bighorn ibex hartebeest impala gazelle camel llama weasel mink polecat otter "
         "skunk badger armadillo sloth orangutan gorilla chimpanzee gibbon siamang guenon baboon "
         "macaque langur marmoset capuchin titi lemur indri elephant panda barracouta eel coho "
         "sturgeon gar lionfish puffer abacus abaya gown accordion guitar airliner airship altar "
         "ambulance analog clock apiary apron ashcan assault rifle backpack bakery balloon "
         "ballpoint banjo bannister barbell barometer barrel barrow baseball basketball bassinet "
         "bassoon bathtub beacon beaker bearskin bib bicycle binder binoculars birdhouse boathouse "
         "bobsled bolo bookcase bottlecap bow bowtie brass brassiere breakwater breastplate broom "
         "bucket buckle bulletproof butcher cab caldron candle cannon canoe carousel cardigan "
         "carton cassette catamaran chainsaw chime chiffonier cinema cleaver cloak clog cocktail "
         "coil computer keyboard confectionery corkscrew cornet cowboy cradle crate crib croquet "
         "crutch cuirass dam desk dial diaper dishrag dishwasher dock dome doormat drum dumbbell "
         "espresso maker face powder feather boa fireboat fountain pen freight car frying pan "
         "gasmask gondola gong goblet grille guillotine hairspray hammer hamper harmonica harp "
         "harvester hatchet holster honeycomb hook hourglass iPod jeep jigsaw kimono knot lab "
         "coat ladle lampshade laptop lawnmower lens letter opener lifeboat lighter limousine "
         "lipstick loafer lotion loupe lumbermill magnetic compass mailbag maillot manhole maraca "
         "marimba matchstick maypole maze megalith microwave milk can minibus miniskirt minivan "
         "missile mitten mortarboard mosque mosquito net moped mortar muzzle nail neck brace "
         "necklace nipple notebook obelisk oboe ocarina odometer oscilloscope overskirt oxcart "
         "oxygen mask packet paddle padlock paintbrush pajama palace panpipe parachute "
         "parallel bars pedestal pencil perfume petri dish photocopier pick pickelhaube "
         "pinwheel pirate plane planetarium plunger pole poncho pool table potter's wheel "
         "prayer rug printer prison projectile projector puck punching bag purse quill quilt "
         "racer racket radiator radio rapeseed reel refrigerator revolver rifle rotisserie "
         "rubber eraser rugby ball rule sandal sarong saxophone scabbard scale schooner "
         "scoreboard screwdriver seatbelt sewing machine shield shoji shovel shower cap "
         "shutter ski ski mask sleeping bag slide rule snorkel snowmobile sombrero soup bowl "
         "space bar spatula speedboat spindle sports car spotlight stage steam locomotive "
         "stethoscope stole stopwatch stove strainer streetcar stretcher studio couch stupa "
         "submarine suit sundial sunglass sunscreen swab sweatshirt swing switch syringe tank "
         "teapot teddy thatch thimble thresher throne tile roof toaster toilet torch totem "
         "tractor trailer truck tray trench coat tricycle trimaran tripod trolleybus trombone "
         "tub turnstile typewriter umbrella unicycle upright vacuum vase vault velvet violin "
         "volleyball waffle iron wallet wardrobe warplane washbasin washer water bottle jug "
         "tower whiskey jug whistle wig windsor tie wine bottle wok wooden spoon wool yawl yurt "
         "comic crossword street sign traffic light book jacket menu plate guacamole consomme "
         "trifle ice cream lolly bagel pretzel cheeseburger hotdog mashed potato cabbage broccoli "
         "cauliflower zucchini spaghetti squash acorn butternut cucumber artichoke pepper cardoon "
         "mushroom granny smith strawberry orange lemon fig pineapple banana jackfruit custard "
         "apple pomegranate hay carbonara chocolate sauce dough meat loaf pizza potpie burrito "
         "espresso cup eggnog alp bubble cliff coral reef geyser lakeside promontory sandbar "
         "seashore valley volcano ballplayer groom scuba diver rapeseed daisy slipper corn "
         "buckeye agaric gyromitra stinkhorn earthstar bolete ear toilet tissue").split()
MODS = ("American European African Indian Japanese Siamese Persian Egyptian Tibetan Scottish Irish "
        "English French German Italian Mexican Siberian Arctic common great little giant pygmy "
        "spotted striped banded red black white grey brown golden yellow green blue king water "
        "sea wood house garden field rock desert mountain tree long-horned short-haired "
        "curly-coated wire-haired soft-coated flat-coated three-toed two-toed horned hooded "
        "crested bearded frilled leatherback loggerhead mud box band fire electric dung ground "
        "tiger leaf stick walking folding rocking sliding chain mail rain police garbage fire "
        "moving school passenger tow pickup convertible racing mountain swimming paper dining "
        "grand upright hand hair spider bath beer wine coffee tea soup").split()


def class_names(n: int) -> tuple[list[str], str, str]:
    """``n`` distinct synthetic class names with realistic lengths, the template and the style."""
    rng = random.Random(n)
    if n <= len(DTD):
        return DTD[:n], "{} texture.", "DTD-like"
    names: set[str] = set()
    if n <= 500:  # SUN397: 1-4 words ("apartment building outdoor"), mean ~2
        style, counts, weights = "SUN397-like", (1, 2, 3, 4), (35, 40, 20, 5)
        while len(names) < n:
            k = rng.choices(counts, weights)[0]
            words = [rng.choice(PLACES)] + [rng.choice(PLACE_MODS + PLACES) for _ in range(k - 1)]
            names.add(" ".join(words))
    else:  # ImageNet: 1-5 words ("Greater Swiss Mountain dog"), mean ~1.8
        style, counts, weights = "ImageNet-like", (1, 2, 3, 4, 5), (45, 36, 14, 4, 1)
        while len(names) < n:
            k = rng.choices(counts, weights)[0]
            names.add(" ".join([rng.choice(MODS) for _ in range(k - 1)] + [rng.choice(NOUNS)]))
    return sorted(names), "a photo of a {}.", style


# --------------------------------------------------------------------------- FLOP counts
def step_flops(eot: list[int], batch: int = 4, K: int = 5, J: int = 6, L: int = 12, d_v: int = 768,
               d_t: int = 512, patches: int = 196, ctx: int = 77) -> dict:
    """FLOPs (2 per multiply-add) of one training step of each path, ViT-B/16 sizes by default.

    Per token and block: projections and MLP 24 d^2 forward, attention 4 n d (n keys); the
    backward of a frozen block computes input gradients only: 24 d^2 + 8 n d. Returns the
    FLOPs of the image and text parts of both paths. The fast path's counts are the work it
    cannot avoid while staying exact: shared blocks 1..J-1, teacher and student blocks J..L
    (last blocks for the tokens read), the packed words of every prompt through blocks J..L.
    """
    def fwd(rows, d, n):
        return rows * (24 * d * d + 4 * n * d)

    def bwd(rows, d, n):
        return rows * (24 * d * d + 8 * n * d)

    def last(rows_all, rows_out, d, n, backward=False):  # k, v for all rows, the rest for rows_out
        return rows_all * 4 * d * d + rows_out * (20 * d * d + (8 if backward else 4) * n * d)

    C, W, Tw = len(eot), sum(eot), max(eot)      # classes, packed words, padded words per class
    nv, ns, S = patches + 1, patches + 1 + K, 1 + K + Tw
    stem = batch * patches * d_v * 3 * 16 * 16 * 2
    blocks = L - J + 1
    fast_image = (stem + (J - 1) * batch * fwd(nv, d_v, nv)                                   # shared
                  + (blocks - 1) * batch * fwd(nv, d_v, nv) + batch * last(nv, 1, d_v, nv)      # teacher
                  + (blocks - 1) * batch * (fwd(ns, d_v, ns) + bwd(ns, d_v, ns))                # student
                  + batch * (last(ns, 1 + K, d_v, ns) + last(ns, 1 + K, d_v, ns, backward=True)))
    fast_text = ((blocks - 1) * (W * 48 * d_t * d_t + C * Tw * S * 12 * d_t)
                 + last(W, C, d_t, S) + last(W, C, d_t, S, backward=True))
    ref_image = (2 * stem + (J - 1) * batch * fwd(nv, d_v, nv) + blocks * batch * (fwd(ns, d_v, ns) + bwd(ns, d_v, ns))
                 + L * batch * fwd(nv, d_v, nv))                                                # + separate teacher
    ref_text = (J - 1) * C * fwd(ctx, d_t, ctx) + blocks * C * (fwd(ctx + K, d_t, ctx + K) + bwd(ctx + K, d_t, ctx + K))
    return {"fast_image": fast_image, "fast_text": fast_text, "fast": fast_image + fast_text,
            "ref_image": ref_image, "ref_text": ref_text, "ref": ref_image + ref_text}


def gemm_rate(threads: int, sizes=((808, 768, 3072), (808, 3072, 768), (3368, 512, 2048)), seconds: float = 2.0) -> dict:
    """Measured fp32 matmul GFLOP/s at sizes of the fast path's largest products."""
    import torch

    torch.set_num_threads(threads)
    rates = {}
    for m, k, n in sizes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            reps += 1
        rates[f"{m}x{k}x{n}"] = 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9
    return rates


# --------------------------------------------------------------------------- one configuration
def _rss_reset() -> bool:
    """Reset the resident-set high-water mark (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_peak_mb() -> float:
    """VmHWM of this process in MB (ru_maxrss where /proc is missing)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_one(cfg: dict) -> dict:
    """One (classes, method, path) measurement in this (fresh) process."""
    import resource

    import torch

    from mmrl.engine import precision as amp
    from mmrl.models import build_method, load_backbone, method_config, reference
    from mmrl.models.mmrl import ImageFeatures

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    device = torch.device(cfg["device"])
    cuda = device.type == "cuda"
    # fp32; bf16 = what mmrl trains with (on a CPU the frozen weights cast to bf16 once, the towers under
    # autocast, the loss head in fp32); bf16-autocast = autocast over fp32 weights (mmrl < 0.5 on a CPU)
    precision = cfg["precision"]
    amp_precision = "fp32" if precision == "fp32" else "bf16"
    autocast = amp.autocast(device, amp_precision)
    ref = cfg["path"] == "reference"
    if ref and not cuda:
        try:  # the reference needs ~19 MB per class: if memory runs out, be the process the kernel kills
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")
        except OSError:
            pass

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def cpu_s() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    backbone = load_backbone("ViT-B-16", pretrained=False, device=device)
    model = build_method(backbone, method_config(cfg["method"]))
    original = None
    if cfg.get("compile") and cfg["eval_batch"] > 0:  # the float64 truth of the compiled logits' check
        import copy

        original = copy.deepcopy(model)
    if precision == "bf16":
        amp.cast_frozen(model, "bf16")
    names, template, _ = class_names(cfg["classes"])
    t0 = time.perf_counter()
    model.set_classes(names, template)
    sync()
    out = {"set_classes_s": time.perf_counter() - t0}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=5e-4)
    g = torch.Generator().manual_seed(1)
    size = backbone.image_size
    images = torch.randn(cfg["batch"], 3, size, size, generator=g).to(device)
    labels = torch.randint(0, len(names), (cfg["batch"],), generator=g).to(device)

    def loss_of(y):
        if not ref:
            return amp.loss(model, images, y, device=device, precision=amp_precision)
        with autocast:  # the reference towers, the loss head in fp32 as the fast path's
            feats = reference.encode_image(model, images, teacher=True)
            text = reference.encode_text(model)
        return model.loss_from_features(ImageFeatures(*(amp._float(f) for f in feats)), amp._float(text), y)

    def step(y=labels) -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_of(y).total
        loss.float().backward()
        opt.step()
        return float(loss)

    if cfg["steps"] > 0:
        if ref and not cuda and len(names) > 8:
            # warm-up on 8 classes: same kernels and code path, seconds instead of minutes
            model.set_classes(names[:8], template)
            step(labels % 8)
            model.set_classes(names, template)
        else:
            step()  # warm-up
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() / 2**20
        else:
            out["rss_reset"] = _rss_reset()
            base = _rss_now_mb()
        walls, cpus = [], []
        while len(walls) < cfg["steps"] and (not walls or sum(walls) + walls[-1] <= cfg["budget_s"]):
            w, c = time.perf_counter(), cpu_s()
            out["loss"] = step()
            sync()
            walls.append(time.perf_counter() - w)
            cpus.append(cpu_s() - c)
        out.update(step_s=statistics.median(walls), step_s_all=walls, step_cpu_s=statistics.median(cpus),
                   mem_base_mb=base,
                   mem_peak_mb=(torch.cuda.max_memory_allocated() / 2**20) if cuda else _rss_peak_mb())

    if cfg["eval_batch"] > 0:
        del opt
        eval_images = torch.randn(cfg["eval_batch"], 3, size, size, generator=g).to(device)
        with torch.no_grad():
            text = None
            if not ref:
                t0 = time.perf_counter()
                text = amp.encode_text(model, device=device, precision=amp_precision)
                sync()
                out["text_once_s"] = time.perf_counter() - t0

            def evaluate(x):  # what `mmrl eval` runs per batch (fast path), or the reference
                if ref:
                    with autocast:
                        return reference.logits(model, x)
                return amp.logits(model, x, text, device=device, precision=amp_precision)

            evaluate(eval_images[:2])  # warm-up
            walls, cpus = [], []
            for _ in range(cfg["eval_batches"]):
                sync()
                t0, c0 = time.perf_counter(), cpu_s()
                evaluate(eval_images)
                sync()
                walls.append(time.perf_counter() - t0)
                cpus.append(cpu_s() - c0)
            out["eval_s"] = statistics.median(walls)
            out["eval_img_per_s"] = cfg["eval_batch"] / out["eval_s"]
            out["eval_img_per_cpu_s"] = cfg["eval_batch"] / statistics.median(cpus)
            if original is not None and not ref:
                out.update(_compiled_eval(model, original, text, evaluate, eval_images, cfg, cpu_s, names,
                                          template))
    return out


def _compiled_eval(model, original, text, evaluate, eval_images, cfg, cpu_s, names, template) -> dict:
    """torch.compile of the evaluation (:func:`mmrl.engine.precision.compiled_logits`): the seconds of
    compiling (the first call), images/s after it, and its accuracy against the float64 truth beside
    the eager path's (tests/precision.py's error ratio, per logits kind, on 4 images)."""
    import copy

    import torch

    from mmrl.engine import precision as amp

    device = eval_images.device
    prec = "fp32" if cfg["precision"] == "fp32" else "bf16"
    run = amp.compiled_logits(model, text, device=device, precision=prec)
    out = {}
    t0, c0 = time.perf_counter(), cpu_s()
    run(eval_images)
    out["compile_s"], out["compile_cpu_s"] = time.perf_counter() - t0, cpu_s() - c0
    walls, cpus = [], []
    for _ in range(cfg["eval_batches"]):
        t0, c0 = time.perf_counter(), cpu_s()
        run(eval_images)
        walls.append(time.perf_counter() - t0)
        cpus.append(cpu_s() - c0)
    out["compiled_img_per_s"] = cfg["eval_batch"] / statistics.median(walls)
    out["compiled_img_per_cpu_s"] = cfg["eval_batch"] / statistics.median(cpus)
    x = eval_images[:4]
    torch.set_default_dtype(torch.float64)
    try:
        m64 = copy.deepcopy(original).double()
        m64.set_classes(names, template)
        truth = m64.logits(x.double(), m64.encode_text())
    finally:
        torch.set_default_dtype(torch.float32)
    del m64
    eager, compiled = evaluate(x), run(x)

    def err(a, b):
        return float((a.double() - b).norm() / b.norm())
    unit = 2.0 ** -8 if prec == "bf16" else 2.0 ** -24
    out["compiled_error_ratio"] = {k: max(err(compiled.of(k), truth.of(k)), unit) / max(err(eager.of(k), truth.of(k)), unit)
                                   for k in ("class", "rep", "fused")}
    out["eager_rel_error"] = {k: err(eager.of(k), truth.of(k)) for k in ("class", "rep", "fused")}
    return out


# --------------------------------------------------------------------------- driver
# Peak RSS of a CPU reference-path training step grows by ~19 MB per class at batch 4 in fp32
# (measured: 397 classes 8.9 GB, 1000 classes 19.6 GB): activations of C x 82 tokens through
# 7 text blocks, attention weights included.
REF_MB_PER_CLASS = 19.0


def _spawn(cfg: dict, omp_wait: str) -> dict:
    """Run one configuration in a fresh interpreter (clean memory high-water mark)."""
    env = dict(os.environ)
    if omp_wait != "default":
        env["OMP_WAIT_POLICY"] = omp_wait.upper()
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-2000:]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _prompt_stats(n: int, batch: int) -> dict:
    from open_clip.tokenizer import SimpleTokenizer

    names, template, style = class_names(n)
    eot = SimpleTokenizer(context_length=77)([template.format(c) for c in names]).argmax(dim=-1)
    return {"style": style, "template": template, "eot_mean": round(float(eot.float().mean()), 2),
            "eot_max": int(eot.max()), "examples": names[:3], "gflops": {
                k: round(v / 1e9, 1) for k, v in step_flops(eot.tolist(), batch=batch).items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", nargs="+", choices=("fp32", "bf16", "bf16-autocast"), default=["fp32"],
                    help="one or more, measured side by side in alternating fresh processes: bf16 = mmrl's bf16 "
                         "(frozen weights cast once on a CPU, loss head fp32), bf16-autocast = autocast over "
                         "fp32 weights (the CPU path before the cast)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat each (classes, method, path) this many times, the precisions alternating")
    ap.add_argument("--compile", action="store_true",
                    help="also time torch.compile of the evaluation (compile seconds, img/s after, accuracy "
                         "against float64 beside the eager path's)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed training steps of the fast path after 1 warm-up (default 5 CPU, 20 GPU)")
    ap.add_argument("--ref-steps", type=int, default=None,
                    help="timed steps of the reference path (default 2 CPU, 20 GPU: it takes minutes per "
                         "step at 1000 classes on a CPU)")
    ap.add_argument("--classes", type=int, nargs="+", default=[47, 397, 1000])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="per configuration: stop timing steps when the next one would end past this many "
                         "seconds (at least one timed step)")
    ap.add_argument("--batch", type=int, default=4, help="training batch")
    ap.add_argument("--eval-batch", type=int, default=250, help="evaluation batch (0: no evaluation)")
    ap.add_argument("--eval-batches", type=int, default=1, help="timed evaluation batches (after a warm-up)")
    ap.add_argument("--eval-methods", nargs="+", choices=METHODS, default=None,
                    help="methods to evaluate (default: the first of --methods on a CPU, all on a GPU; "
                         "evaluation costs the same for both methods up to a few small matmuls)")
    ap.add_argument("--paths", nargs="+", choices=("fast", "reference"), default=["fast", "reference"])
    ap.add_argument("--omp-wait", choices=("default", "passive", "active"), default="default",
                    help="OMP_WAIT_POLICY of the measured processes: 'passive' makes idle OpenMP threads sleep "
                         "at once instead of spinning, much steadier on a CPU shared with other jobs")
    ap.add_argument("--max-mem-frac", type=float, default=0.8,
                    help="CPU: skip a reference-path training run whose estimated peak memory "
                         f"({REF_MB_PER_CLASS:.0f} MB per class) exceeds this fraction of the available memory "
                         "(0 = never skip)")
    ap.add_argument("--json", type=Path, default=None, help="write all results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        cfg = json.loads(args.worker)
        print(json.dumps(gemm_rate(cfg["threads"]) if cfg.get("gemm") else run_one(cfg)))
        return 0

    gpu = args.device.startswith("cuda")
    steps = args.steps if args.steps is not None else (20 if gpu else 5)
    ref_steps = args.ref_steps if args.ref_steps is not None else (20 if gpu else 2)
    eval_methods = args.eval_methods or (args.methods if gpu else args.methods[:1])
    import torch

    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "memory_gb": round(mem_total_gb(), 1),
               "torch": torch.__version__, "threads": args.threads, "device": args.device,
               "precision": args.precision, "omp_wait": args.omp_wait, "cpu_bf16": _cpu_bf16()}
    if gpu:
        machine["gpu"] = torch.cuda.get_device_name(0)
    results = {"machine": machine, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                                            if k != "worker"},
               "prompts": {str(n): _prompt_stats(n, args.batch) for n in args.classes}, "loadavg_start": load_text(),
               "runs": []}
    print(f"machine: {machine}  load average at start: {results['loadavg_start']}", flush=True)
    for n, st in results["prompts"].items():
        print(f"  {n} classes ({st['style']}, '{st['template']}'): EOT mean {st['eot_mean']}, max {st['eot_max']}, "
              f"e.g. {st['examples']}", flush=True)
    if not gpu:
        results["gemm_gflops"] = _spawn({"gemm": True, "threads": args.threads}, args.omp_wait)
        print(f"fp32 matmul GFLOP/s ({args.threads} threads): "
              f"{ {k: round(v, 1) for k, v in results['gemm_gflops'].items() if k != 'error'} }", flush=True)
    t_start = time.time()
    plan = [(n, method, path, rnd, precision) for n in args.classes for method in args.methods
            for path in args.paths  # fast and reference one after the other: similar machine load
            for rnd in range(args.rounds) for precision in args.precision]  # precisions alternate
    for n, method, path, rnd, precision in plan:
        cfg = {"classes": n, "method": method, "path": path, "device": args.device,
               "precision": precision, "threads": args.threads, "batch": args.batch,
               "steps": steps if path == "fast" else ref_steps, "budget_s": args.budget_s,
               "eval_batch": args.eval_batch if method in eval_methods else 0,
               "eval_batches": args.eval_batches, "round": rnd,
               "compile": args.compile and path == "fast"}
        load = load_text()
        need = REF_MB_PER_CLASS * n * args.batch / 4 + 2000
        if path == "reference" and not gpu and args.max_mem_frac > 0 \
                and need > args.max_mem_frac * mem_available_mb():
            r = {"error": f"skipped: needs ~{need / 1024:.0f} GB, {mem_available_mb() / 1024:.0f} GB "
                          "available (--max-mem-frac)"}
        else:
            r = _spawn(cfg, args.omp_wait)
        r.update(cfg, loadavg_before=load, loadavg_after=load_text())
        results["runs"].append(r)
        if "error" in r:
            print(f"{n:5d} {method:7s} {path:9s} {precision:13s} ERROR {r['error'][-300:]}", flush=True)
        else:
            ev = (f" eval {r['eval_img_per_s']:.2f} img/s ({r['eval_img_per_cpu_s']:.2f} per CPU-s)"
                  if "eval_img_per_s" in r else "")
            if "compile_s" in r:
                ev += (f" compiled {r['compiled_img_per_s']:.2f} img/s ({r['compiled_img_per_cpu_s']:.2f} per "
                       f"CPU-s) after {r['compile_s']:.0f} s compiling, error ratio vs eager "
                       f"{max(r['compiled_error_ratio'].values()):.2f}")
            print(f"{n:5d} {method:7s} {path:9s} {precision:13s} step {r.get('step_s', float('nan')):8.2f} s "
                  f"(cpu {r.get('step_cpu_s', float('nan')):7.2f} s) peak {r.get('mem_peak_mb', 0):8.0f} MB"
                  f"{ev}  load {load} [{time.time() - t_start:.0f} s]", flush=True)
    results["loadavg_end"] = load_text()
    results["total_s"] = time.time() - t_start
    print()
    if len(args.precision) > 1:
        print(precision_table(results))
    else:
        print(table(results))
    print()
    print(flop_table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        tmp.write_text(json.dumps(results, indent=1))
        os.replace(tmp, args.json)
    return 0


def _cpu_bf16() -> str:
    from mmrl.engine.precision import choose_precision, native_cpu_bf16

    import torch

    return f"{native_cpu_bf16()[1]}; auto -> {choose_precision('auto', torch.device('cpu'))[0]}"


def precision_table(results: dict) -> str:
    """Markdown table: each precision beside fp32 per (classes, method, path), medians over the
    rounds, with the load average before each run (range over the rounds)."""
    groups: dict = {}
    for r in results["runs"]:
        if "error" not in r:
            groups.setdefault((r["classes"], r["method"], r["path"]), {}).setdefault(r["precision"], []).append(r)

    def med(rs, k):
        v = [r[k] for r in rs if k in r]
        return statistics.median(v) if v else None

    def load(rs):
        v = [float(r["loadavg_before"].split()[0]) for r in rs]
        return f"{min(v):.1f}-{max(v):.1f}"
    lines = ["| classes | method | path | precision | runs | step s | step CPU s | CPU-time speed-up | "
             "eval img/s | eval img per CPU-s | eval CPU speed-up | compiled img per CPU-s | compile s | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = (lambda x, f=".2f": "-" if x is None else format(x, f))
    for (n, method, path), by in groups.items():
        base = by.get("fp32", [])
        for prec, rs in by.items():
            sc, bc = med(rs, "step_cpu_s"), med(base, "step_cpu_s")
            ec, bec = med(rs, "eval_img_per_cpu_s"), med(base, "eval_img_per_cpu_s")
            lines.append(f"| {n} | {method} | {path} | {prec} | {len(rs)} | {fmt(med(rs, 'step_s'))} | {fmt(sc)} | "
                         f"{fmt(bc / sc if sc and bc else None)}x | {fmt(med(rs, 'eval_img_per_s'))} | {fmt(ec)} | "
                         f"{fmt(ec / bec if ec and bec else None)}x | {fmt(med(rs, 'compiled_img_per_cpu_s'))} | "
                         f"{fmt(med(rs, 'compile_s'), '.0f')} | {load(rs)} |")
    return "\n".join(lines)


def table(results: dict) -> str:
    """Markdown table: fast vs reference per (classes, method)."""
    runs = {(r["classes"], r["method"], r["path"]): r for r in results["runs"]}
    mem = "peak GPU MB" if results["machine"]["device"].startswith("cuda") else "peak RSS MB"
    lines = [f"| classes | method | step fast s | step ref s | speed-up | cpu-time speed-up | {mem} fast | "
             f"{mem} ref | ratio | eval img/s fast | eval img/s ref | eval speed-up |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (n, method, path), f in runs.items():
        if path != "fast":
            continue
        r = runs.get((n, method, "reference"), {})

        def num(d, k, fmt):
            return format(d[k], fmt) if k in d else "-"

        def ratio(k, inverse=False):
            if k not in f or k not in r:
                return "-"
            return f"{(f[k] / r[k]) if inverse else (r[k] / f[k]):.2f}x"

        lines.append(f"| {n} | {method} | {num(f, 'step_s', '.2f')} | {num(r, 'step_s', '.2f')} | {ratio('step_s')} | "
                     f"{ratio('step_cpu_s')} | {num(f, 'mem_peak_mb', '.0f')} | {num(r, 'mem_peak_mb', '.0f')} | "
                     f"{ratio('mem_peak_mb', inverse=True)} | {num(f, 'eval_img_per_s', '.2f')} | "
                     f"{num(r, 'eval_img_per_s', '.2f')} | {ratio('eval_img_per_s', inverse=True)} |")
    return "\n".join(lines)


def flop_table(results: dict) -> str:
    """Markdown table: FLOPs per training step of both paths and the fast path's floor."""
    rates = [v for k, v in results.get("gemm_gflops", {}).items() if k != "error"]
    rate = max(rates) if rates else None
    lines = ["| classes | GFLOP fast (image + text) | GFLOP ref (image + text) | FLOP ratio | "
             f"fast floor s at {rate or float('nan'):.0f} GFLOP/s | ref floor s |", "|---|---|---|---|---|---|"]
    for n, st in results["prompts"].items():
        g = st["gflops"]
        floor = (lambda x: f"{x / rate:.2f}") if rate else (lambda x: "-")
        lines.append(f"| {n} | {g['fast']:.0f} ({g['fast_image']:.0f} + {g['fast_text']:.0f}) | "
                     f"{g['ref']:.0f} ({g['ref_image']:.0f} + {g['ref_text']:.0f}) | {g['ref'] / g['fast']:.2f}x | "
                     f"{floor(g['fast'])} | {floor(g['ref'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
