.PHONY: fmt lint test presubmit bench
fmt:
	cargo fmt --all
lint:
	cargo clippy --workspace --all-targets -- -D warnings
test:
	./scripts/test
bench:
	cargo bench --workspace
presubmit: test
