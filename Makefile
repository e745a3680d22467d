# codegen-ray: container and cluster targets. Target names follow CodeGen-MCP's Makefile.
#
#   make docker-up && make docker-test && make docker-down

COMPOSE        ?= docker compose
IMAGE          ?= codegen-ray:dev
E2E_TARGET     ?= localhost:50051
RAY_TOKEN_FILE ?= $(HOME)/.ray/auth_token
PYTEST         ?= $(if $(wildcard .venv/bin/pytest),.venv/bin/pytest,pytest)
PYTHON         ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
UV             ?= $(if $(wildcard .venv/bin/uv),.venv/bin/uv,uv)
WAIT_SECONDS   ?= 180

# Every compose call gets the shared Ray token (compose.yml refuses to start without it)
# and the image name, so `docker compose` sees the same project whatever the target.
DC      = RAY_AUTH_TOKEN="$$(cat $(RAY_TOKEN_FILE))" CODEGEN_IMAGE=$(IMAGE) $(COMPOSE) -p codegen-ray -f compose.yml
DC_DEV  = $(DC) -f compose.dev.yml
DC_ALL  = $(DC) --profile multi-worker

.PHONY: help ray-token dist docker-build docker-up docker-up-dev docker-up-multi \
        docker-wait docker-restart docker-down docker-logs docker-ps docker-clean docker-test

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_%-]+:.*?## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*?## "}; {printf "  %-22s %s\n", $$1, $$2}'

$(RAY_TOKEN_FILE):
	@mkdir -p "$(dir $@)"
	@umask 077 && $(PYTHON) -c 'import secrets; print(secrets.token_hex(32))' > "$@"
	@echo "Generated a Ray auth token in $@"

ray-token: $(RAY_TOKEN_FILE) ## Print the Ray auth token (the dashboard asks for it)
	@cat $(RAY_TOKEN_FILE)

dist: ## Build the wheel that ray-cluster.yaml installs on every node (dist/)
	rm -rf dist && $(UV) build --wheel --out-dir dist

docker-build: $(RAY_TOKEN_FILE) ## Build the one image (head, workers, gateway)
	$(DC) build head

docker-up: docker-build ## Start head + gateway, one worker and MinIO
	$(DC) up -d
	@$(MAKE) --no-print-directory docker-wait

docker-up-dev: docker-build ## Same, with the working tree mounted (compose.dev.yml)
	$(DC_DEV) up -d
	@$(MAKE) --no-print-directory docker-wait

docker-up-multi: docker-build ## Same as docker-up plus a second worker (profile multi-worker)
	$(DC_ALL) up -d
	@$(MAKE) --no-print-directory docker-wait

docker-wait: $(RAY_TOKEN_FILE) ## Wait until the gateway answers gRPC health with SERVING
	@echo "Waiting up to $(WAIT_SECONDS)s for the gateway..."
	@for i in $$(seq 1 $(WAIT_SECONDS)); do \
	  if $(DC) exec -T head codegen-ray health --target localhost:50051 >/dev/null 2>&1; then \
	    echo "gateway SERVING on $(E2E_TARGET)"; exit 0; fi; \
	  sleep 1; \
	done; \
	echo "gateway not healthy after $(WAIT_SECONDS)s"; $(DC_ALL) ps; exit 1

docker-restart: $(RAY_TOKEN_FILE) ## Restart the Ray services (picks up edits under docker-up-dev)
	$(DC_ALL) restart head worker worker-2

docker-down: $(RAY_TOKEN_FILE) ## Stop everything (volumes are kept)
	$(DC_ALL) down --remove-orphans

docker-logs: $(RAY_TOKEN_FILE) ## Follow the logs of all services
	$(DC_ALL) logs -f --tail=200

docker-ps: $(RAY_TOKEN_FILE) ## Show the services
	$(DC_ALL) ps

docker-shell-%: $(RAY_TOKEN_FILE) ## Shell in a service: docker-shell-head, -worker, -worker-2, -minio
	$(DC_ALL) exec $* /bin/sh -c 'command -v bash >/dev/null && exec bash || exec sh'

docker-clean: $(RAY_TOKEN_FILE) ## Remove containers, volumes (workspaces, checkpoints) and the image
	$(DC_ALL) down --volumes --remove-orphans --rmi local

docker-test: ## Run the e2e suite against the running stack (E2E_TARGET=host:port)
	CODEGEN_E2E_TARGET=$(E2E_TARGET) $(PYTEST) tests/e2e --target $(E2E_TARGET)
