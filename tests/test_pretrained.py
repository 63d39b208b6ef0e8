"""Released-weight loading, offline: `timm.create_model(name, pretrained=True)` for every zoo model with weights.

* URL weights: a local HTTP server on 127.0.0.1 serves each cfg URL's own path and query (only the scheme and host
  of the download are rewritten), so every download goes through timm's real cache logic; each model must land in
  its own, named cache file and load strictly.
* Hub weights: a fake Hugging Face cache in hub layout under a temporary HF_HOME, with HF_HUB_OFFLINE=1, in a
  subprocess (huggingface_hub reads those variables at import).
Full-size models are built on the meta device (keys and shapes are still checked by the strict load) from
checkpoints whose tensors are zero-stride views of one value, so the files are a few hundred kB. The tiny `test_*`
variants go through the same two paths on CPU, where the loaded values are compared.
"""
import argparse
import http.server
import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import timm
import torch
import torch.hub
import timm.models._builder as timm_builder
import timm.models._hub as timm_hub

import vimzoo
from vimzoo import zoo
from vimzoo.models import _helpers
from vimzoo.models._helpers import load_checkpoint, match_head, released_weights, unwrap_checkpoint

# where each family's official code keeps the weights (None: timm's own files, a bare state dict)
MAIN_KEY = {'vim': 'model', 'lbvim': 'model', 'biformer': 'model', 'van': 'state_dict', 'dependencyvit': 'model'}
EMA_KEY = {'vim': 'model_ema', 'lbvim': 'model_ema', 'biformer': 'model_ema', 'van': 'state_dict_ema',
           'dependencyvit': 'model_ema'}
OWN_FAMILIES = tuple(MAIN_KEY)
TINY = {'vim': 'test_vim', 'lbvim': 'test_lbvim', 'biformer': 'test_biformer', 'van': 'test_van',
        'dependencyvit': 'test_dependencyvit'}
# official Hub locations (hustvl/Vim README; VAN-Classification's model_urls)
OFFICIAL_HUB = {
    'vim_tiny_patch16_224.in1k': ('hustvl/Vim-tiny-midclstok', 'vim_t_midclstok_76p1acc.pth'),
    'vim_tiny_patch16_stride8_224.in1k': ('hustvl/Vim-tiny-midclstok', 'vim_t_midclstok_ft_78p3acc.pth'),
    'vim_small_patch16_224.in1k': ('hustvl/Vim-small-midclstok', 'vim_s_midclstok_80p5acc.pth'),
    'vim_small_patch16_stride8_224.in1k': ('hustvl/Vim-small-midclstok', 'vim_s_midclstok_ft_81p6acc.pth'),
    'vim_base_patch16_224.in1k': ('hustvl/Vim-base-midclstok', 'vim_b_midclstok_81p9acc.pth'),
    'van_b0.in1k': ('Visual-Attention-Network/VAN-Tiny-original', 'van_tiny_754.pth.tar'),
    'van_b1.in1k': ('Visual-Attention-Network/VAN-Small-original', 'van_small_811.pth.tar'),
    'van_b2.in1k': ('Visual-Attention-Network/VAN-Base-original', 'van_base_828.pth.tar'),
    'van_b3.in1k': ('Visual-Attention-Network/VAN-Large-original', 'van_large_839.pth.tar'),
}


def _weight_cfgs():
    """{'name.tag': (family, PretrainedCfg)} of every zoo model whose cfg points at weights."""
    out = {}
    for family in zoo.list_families():
        for name in zoo.list_models(family, include_test=True):
            for full in timm.list_pretrained(f'{name}.*'):
                cfg = timm.models.get_pretrained_cfg(full)
                if cfg is not None and cfg.has_weights:
                    out[full] = (family, cfg)
    return out


WEIGHT_CFGS = _weight_cfgs()


def _cache_name(cfg) -> str:
    if isinstance(cfg.url, (tuple, list)):
        return cfg.url[1]
    return os.path.basename(urlsplit(cfg.url).path)


def _url(cfg) -> str:
    return cfg.url[0] if isinstance(cfg.url, (tuple, list)) else cfg.url


def _constant_state_dict(model: torch.nn.Module, value: float):
    # zero-stride views: the file stores one element per tensor, the strict load still sees every full shape
    return {k: torch.full((), value, dtype=v.dtype).expand(v.shape) for k, v in model.state_dict().items()}


def _official_file(path: Path, family: str, state_dict, ema=None) -> Path:
    key = MAIN_KEY.get(family)
    if key is None:   # timm's own re-hosted weights: a bare state dict
        torch.save(state_dict, path)
        return path
    payload = {key: state_dict, 'epoch': 299, 'args': argparse.Namespace(model=family, lr=5e-4)}
    if ema is not None:
        payload[EMA_KEY[family]] = ema
    torch.save(payload, path)
    return path


def _meta_checkpoint(full_name: str, family: str, path: Path) -> Path:
    with torch.device('meta'):
        model = timm.create_model(full_name)
    return _official_file(path, family, _constant_state_dict(model, 0.5))


def _random_state_dict(model: torch.nn.Module, seed: int):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=g).to(v.dtype) if v.is_floating_point() else v.clone())
            for k, v in model.state_dict().items()}


def _assert_loaded(model: torch.nn.Module, expected) -> None:
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k]), k


# ----------------------------------------------------------------------------------------------------- the cfgs
def test_every_weight_source_has_its_own_cache_file_name():
    names = {}
    for full, (family, cfg) in WEIGHT_CFGS.items():
        if cfg.url:
            name = _cache_name(cfg)
            assert name and '/' not in name, (full, cfg.url)
            names.setdefault(name, []).append(full)
        if family in OWN_FAMILIES:
            assert cfg.custom_load, full   # URL / file weights reach model.load_pretrained (main weights, strict)
            assert not cfg.url or isinstance(cfg.url, tuple), full
    clashes = {n: fulls for n, fulls in names.items() if len(fulls) > 1}
    assert not clashes, clashes
    official = {'biformer_tiny.in1k': 'biformer_tiny_in1k.pth', 'biformer_small.in1k': 'biformer_small_in1k.pth',
                'biformer_base.in1k': 'biformer_base_in1k.pth', 'van_b4.in1k': 'van_b4.pth',
                'van_b4.in22k': 'van_b4_22k.pth', 'van_b5.in22k': 'van_b5_22k.pth', 'van_b6.in22k': 'van_b6_22k.pth'}
    assert {full: _cache_name(WEIGHT_CFGS[full][1]) for full in official} == official


def test_hub_hosted_weights_name_their_repo_and_file():
    hub = {full: (cfg.hf_hub_id, cfg.hf_hub_filename) for full, (family, cfg) in WEIGHT_CFGS.items()
           if family in OWN_FAMILIES and cfg.hf_hub_id}
    assert hub == OFFICIAL_HUB
    for full, (family, cfg) in WEIGHT_CFGS.items():
        if family not in OWN_FAMILIES:
            assert cfg.hf_hub_id and cfg.hf_hub_id.startswith('timm/'), full   # timm's own re-hosts


def test_released_weights_needs_a_plain_file_name():
    assert released_weights('https://x/y/root/content', 'a.pth') == dict(url=('https://x/y/root/content', 'a.pth'),
                                                                         custom_load=True)
    for bad in ('', 'dir/a.pth'):
        with pytest.raises(ValueError, match='plain, non-empty file name'):
            released_weights('https://x/', bad)


# ---------------------------------------------------------------------------------------------- main vs EMA
def test_unwrap_prefers_main_weights_and_gives_ema_on_request():
    main, ema = {'w': torch.zeros(2)}, {'w': torch.ones(2)}
    snapshot = {'model': {'module.w': main['w']}, 'model_ema': ema, 'epoch': 3, 'args': argparse.Namespace()}
    assert torch.equal(unwrap_checkpoint(snapshot)['w'], main['w'])
    assert torch.equal(unwrap_checkpoint(snapshot, use_ema=True)['w'], ema['w'])
    timm_style = {'state_dict': main, 'state_dict_ema': ema, 'arch': 'van_b0'}
    assert torch.equal(unwrap_checkpoint(timm_style, main_keys=('state_dict', 'model'))['w'], main['w'])
    assert torch.equal(unwrap_checkpoint(timm_style, use_ema=True)['w'], ema['w'])
    bare = {'_orig_mod.module.w': main['w'], 'step': 7}
    assert list(unwrap_checkpoint(bare)) == ['w']
    with pytest.raises(KeyError, match='no EMA weights'):
        unwrap_checkpoint({'model': main, 'model_ema': None}, use_ema=True)   # vimzoo's trainer without EMA
    with pytest.raises(KeyError, match='only EMA weights'):
        unwrap_checkpoint({'model_ema': ema})
    with pytest.raises(ValueError, match='no weights'):
        unwrap_checkpoint({'epoch': 1})


@pytest.mark.parametrize('family', OWN_FAMILIES)
def test_checkpoint_with_main_and_ema_loads_main_by_default(family, tmp_path):
    """What the official evaluation loads ('model' / VAN 'state_dict'), unless EMA is asked for explicitly."""
    ref = timm.create_model(TINY[family])
    main, ema = _random_state_dict(ref, 1), _random_state_dict(ref, 2)
    path = _official_file(tmp_path / 'snapshot.pth', family, main, ema)
    model = timm.create_model(TINY[family], pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    _assert_loaded(model, main)
    model.load_pretrained(str(path), use_ema=True)
    _assert_loaded(model, ema)
    model.load_pretrained(str(path))
    _assert_loaded(model, main)
    module = sys.modules[type(model).__module__]
    filtered = module.checkpoint_filter_fn(_helpers.read_checkpoint(path), model, use_ema=True)
    assert all(torch.equal(filtered[k], ema[k]) for k in ema)
    # timm's own file loader would have taken the EMA copy: what this guards against
    assert torch.equal(timm.models.load_state_dict(str(path))[next(iter(ema))], ema[next(iter(ema))])


def test_use_ema_without_ema_weights_is_an_error(tmp_path):
    model = timm.create_model('test_van')
    path = _official_file(tmp_path / 'main_only.pth', 'van', model.state_dict())
    with pytest.raises(KeyError, match='no EMA weights'):
        model.load_pretrained(str(path), use_ema=True)


def test_head_is_kept_where_it_fits_and_dropped_where_not(tmp_path):
    src = timm.create_model('test_biformer')
    path = _official_file(tmp_path / 'b.pth', 'biformer', _random_state_dict(src, 3))
    sd = _helpers.read_checkpoint(path)['model']
    other = timm.create_model('test_biformer', num_classes=7)
    init_head = other.head.weight.clone()
    load_checkpoint(other, path, sys.modules[type(other).__module__].checkpoint_filter_fn)
    assert torch.equal(other.head.weight, init_head) and torch.equal(other.norm.weight, sd['norm.weight'])
    headless = timm.create_model('test_biformer', num_classes=0)
    headless.load_pretrained(str(path))   # strict: the checkpoint's head is dropped, nothing is missing
    same = timm.create_model('test_biformer')
    init_head = same.head.weight.clone()
    load_checkpoint(same, path, sys.modules[type(same).__module__].checkpoint_filter_fn, drop_head=True)
    assert torch.equal(same.head.weight, init_head) and torch.equal(same.norm.weight, sd['norm.weight'])
    assert match_head({'head.weight': torch.zeros(3, 64)}, headless) == {}


def test_in_chans_adaptation_on_the_custom_path(tmp_path):
    src = timm.create_model('test_van')
    sd = _random_state_dict(src, 4)
    path = _official_file(tmp_path / 'v.pth', 'van', sd)
    gray = timm.create_model('test_van', in_chans=1, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(gray.patch_embed1.proj.weight, sd['patch_embed1.proj.weight'].sum(1, keepdim=True))


# --------------------------------------------------------------------------------------- URL downloads, offline
class _Server:
    """HTTP server on 127.0.0.1 answering exact 'path?query' strings with file bytes (404 otherwise)."""

    def __init__(self):
        self.routes, self.requests = {}, []
        routes, requests = self.routes, self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                requests.append(self.path)
                body = routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def serve(self, url: str, path: Path) -> None:
        parts = urlsplit(url)
        self.routes[parts.path + (f'?{parts.query}' if parts.query else '')] = path.read_bytes()

    def local(self, url: str) -> str:
        return urlsplit(url)._replace(scheme='http', netloc=f'127.0.0.1:{self.httpd.server_port}').geturl()


@pytest.fixture()
def url_server(monkeypatch, tmp_path):
    server = _Server()
    server.thread.start()
    real_download = torch.hub.download_url_to_file

    def download_from_local_host(url, dst, *args, **kwargs):
        return real_download(server.local(url), dst, *args, **kwargs)

    monkeypatch.setattr(timm_hub, 'download_url_to_file', download_from_local_host)   # timm's cached download
    monkeypatch.setattr(torch.hub, 'download_url_to_file', download_from_local_host)  # torch's load_state_dict_from_url
    monkeypatch.setattr(timm_builder, 'has_hf_hub', lambda necessary=False: False)   # take the URL, not the Hub copy
    torch_home = tmp_path / 'torch_home'
    monkeypatch.setattr(torch.hub, '_hub_dir', str(torch_home / 'hub'))
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def test_every_url_weight_downloads_to_its_own_file_and_loads_strictly(url_server, tmp_path, monkeypatch):
    opened = []
    real_read = _helpers.read_checkpoint
    monkeypatch.setattr(_helpers, 'read_checkpoint', lambda path: opened.append(Path(path).name) or real_read(path))
    url_cfgs = {full: (family, cfg) for full, (family, cfg) in WEIGHT_CFGS.items() if cfg.url}
    for i, (full, (family, cfg)) in enumerate(url_cfgs.items()):
        url_server.serve(_url(cfg), _meta_checkpoint(full, family, tmp_path / f'src{i}.pth'))
    cache = Path(torch.hub.get_dir()) / 'checkpoints'
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*copying from a non-meta parameter')
        for full, (family, cfg) in url_cfgs.items():
            opened.clear()
            with torch.device('meta'):
                timm.create_model(full, pretrained=True)   # strict load (keys + shapes) inside
            assert (cache / _cache_name(cfg)).is_file(), full
            if family in OWN_FAMILIES:
                assert opened == [_cache_name(cfg)], (full, opened)
    assert sorted(p.name for p in cache.iterdir()) == sorted(_cache_name(c) for _, c in url_cfgs.values())
    assert len(url_server.requests) == len(url_cfgs)   # one download each, nothing served twice


def test_tiny_models_behind_onedrive_style_urls_get_their_own_weights(url_server, tmp_path):
    """Two checkpoints whose URLs end alike ('/root/content') and a folder link (path '/files/'): with the cache file
    name in the cfg each model downloads and loads its own weights (values compared)."""
    urls = {'vim': 'https://api.onedrive.com/v1.0/shares/s!A/root/content',
            'biformer': 'https://api.onedrive.com/v1.0/shares/s!B/root/content',
            'van': 'https://cloud.tsinghua.edu.cn/d/x/files/?p=%2Fvan_tiny.pth&dl=1'}
    expected = {}
    for seed, (family, url) in enumerate(urls.items()):
        sd = _random_state_dict(timm.create_model(TINY[family]), seed)
        ema = {k: v + 1 for k, v in sd.items()}
        url_server.serve(url, _official_file(tmp_path / f'{family}.pth', family, sd, ema=ema))
        expected[family] = sd
    for family, url in urls.items():
        overlay = dict(url=(url, f'{TINY[family]}.pth'))
        model = timm.create_model(TINY[family], pretrained=True, pretrained_cfg_overlay=overlay)
        _assert_loaded(model, expected[family])


# ----------------------------------------------------------------------------------- Hugging Face Hub, offline
_HUB_SCRIPT = r'''
import json, sys, warnings
import torch, timm, vimzoo
import timm.models._hub as timm_hub
import torch.hub

def no_url(*args, **kwargs):
    raise AssertionError('the URL fallback was used: ' + str(args[0]))
torch.hub.download_url_to_file = no_url
timm_hub.download_url_to_file = no_url
requested = []
real = timm_hub.hf_hub_download
def recording(*args, **kwargs):
    path = real(*args, **kwargs)
    requested.append(path)
    return path
timm_hub.hf_hub_download = recording

jobs = json.loads(sys.argv[1])
result = {}
warnings.filterwarnings('ignore', message='.*copying from a non-meta parameter')
for job in jobs:
    requested.clear()
    kwargs = dict(pretrained_cfg_overlay=job['overlay']) if job.get('overlay') else {}
    if job['meta']:
        with torch.device('meta'):
            timm.create_model(job['name'], pretrained=True, **kwargs)
        same = None
    else:
        model = timm.create_model(job['name'], pretrained=True, **kwargs)
        expected = torch.load(job['expected'], weights_only=True)
        same = all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    result[job['name'] + str(job.get('overlay', ''))] = dict(files=list(requested), same=same)
print(json.dumps(result))
'''


def _hub_file(cache: Path, repo: str, filename: str, source: Path) -> Path:
    repo_dir = cache / ('models--' + repo.replace('/', '--'))
    commit = '0123456789abcdef0123456789abcdef01234567'
    (repo_dir / 'refs').mkdir(parents=True, exist_ok=True)
    (repo_dir / 'refs' / 'main').write_text(commit)
    target = repo_dir / 'snapshots' / commit / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
    return target


def test_every_hub_weight_loads_from_an_offline_hub_cache(tmp_path):
    hf_home = tmp_path / 'hf'
    cache = hf_home / 'hub'
    jobs, expected_files = [], {}
    for i, (full, (family, cfg)) in enumerate(WEIGHT_CFGS.items()):
        if not cfg.hf_hub_id:
            continue
        filename = cfg.hf_hub_filename or 'pytorch_model.bin'   # timm's default for its own repos
        src = _meta_checkpoint(full, family, tmp_path / f'src{i}.pth')
        expected_files[full] = str(_hub_file(cache, cfg.hf_hub_id, filename, src))
        jobs.append(dict(name=full, meta=True))
    # tiny models with real values; the snapshot holds main and EMA weights, the Hub path must pick the main ones
    for family in ('vim', 'van'):
        sd = _random_state_dict(timm.create_model(TINY[family]), 5)
        torch.save(sd, tmp_path / f'{family}_expected.pth')
        src = _official_file(tmp_path / f'{family}_hub.pth', family, sd, ema={k: v + 1 for k, v in sd.items()})
        overlay = dict(hf_hub_id=f'vimzoo-test/{family}', hf_hub_filename='weights.pth')
        expected_files[TINY[family] + str(overlay)] = str(_hub_file(cache, overlay['hf_hub_id'], 'weights.pth', src))
        jobs.append(dict(name=TINY[family], meta=False, overlay=overlay,
                         expected=str(tmp_path / f'{family}_expected.pth')))
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HOME=str(hf_home), HF_HUB_CACHE=str(cache),
               TORCH_HOME=str(tmp_path / 'torch_home'))
    env.pop('HF_HUB_ENABLE_HF_TRANSFER', None)
    proc = subprocess.run([sys.executable, '-c', _HUB_SCRIPT, json.dumps(jobs)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == set(expected_files)
    for key, info in result.items():
        assert info['files'][-1:] == [expected_files[key]], (key, info['files'])
        assert info['same'] in (None, True), key
    assert [v['same'] for v in result.values()].count(True) == 2


def test_training_tools_share_the_unwrapping(tmp_path):
    """tools/train.py --initial-checkpoint and tools/validate.py --checkpoint read official snapshots the same way."""
    from vimzoo.train.checkpoint import load_model_weights
    main, ema = {'w': torch.zeros(2)}, {'w': torch.ones(2)}
    path = _official_file(tmp_path / 'snapshot.pth', 'vim', main, ema)   # carries args=argparse.Namespace(...)
    assert torch.equal(load_model_weights(path)['w'], main['w'])
    assert torch.equal(load_model_weights(path, use_ema=True)['w'], ema['w'])
