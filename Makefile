# Thin wrapper over meson.  `make demo` and `make check` install what is
# missing (as root on Debian), configure, build and run.

DEB_PKGS := meson ninja-build pkg-config gcc clang clang-format libsleef-dev \
	libcriterion-dev libopenblas-dev valgrind libjansson-dev zlib1g-dev \
	dataset-fashion-mnist openmpi-bin libopenmpi-dev libdnnl-dev
MESON_CI := -Dwerror=true --buildtype=debugoptimized
ASAN_OPTS := ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
TSAN_OPTS := TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
# seconds per target for `make fuzz`
FUZZ_SECONDS := 60
FUZZ_OPTS := ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

.PHONY: all deps build demo train check check-normal check-clang check-asan \
	check-tsan check-format check-fuzz fuzz format clean

all: build

deps:
	@missing=""; \
	for p in $(DEB_PKGS); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | \
			grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing:$$missing"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing || \
			{ apt-get update && DEBIAN_FRONTEND=noninteractive \
				apt-get install -y $$missing; } || exit 1; \
		else \
			echo "missing packages; run as root:"; \
			echo "  apt-get install -y$$missing"; exit 1; \
		fi; \
	fi

build/build.ninja:
	meson setup build $(MESON_CI)

build: deps build/build.ninja
	ninja -C build

demo: build
	./build/examples/demo

# Trains on Fashion-MNIST (examples/fashion_mnist.c); TRAIN_ARGS passes
# flags, e.g. make train TRAIN_ARGS='--model cnn --epochs 10 --threads 2'.
# NP=N trains data-parallel on N ranks under mpirun (docs/distributed.md);
# MPIRUN_ARGS adds mpirun options (a hostfile: --hostfile hosts).
TRAIN_ARGS :=
NP :=
MPIRUN_ARGS := --oversubscribe $(if $(filter 0,$(shell id -u)),--allow-run-as-root)
train: build
ifeq ($(NP),)
	./build/examples/fashion_mnist $(TRAIN_ARGS)
else
	mpirun -np $(NP) $(MPIRUN_ARGS) ./build/examples/fashion_mnist_dist $(TRAIN_ARGS)
endif

check-normal: build
	meson test -C build --print-errorlogs
	sh tests/install_check.sh build

check-clang: deps
	[ -f build-clang/build.ninja ] || CC=clang meson setup build-clang $(MESON_CI)
	ninja -C build-clang

check-asan: deps
	[ -f build-asan/build.ninja ] || meson setup build-asan $(MESON_CI) \
		-Db_sanitize=address,undefined -Db_lundef=false
	ninja -C build-asan
	$(ASAN_OPTS) meson test -C build-asan --print-errorlogs --no-suite tsan \
		--no-suite bench --no-suite valgrind

check-tsan: deps
	[ -f build-tsan/build.ninja ] || CC=clang meson setup build-tsan \
		$(MESON_CI) -Db_sanitize=thread -Db_lundef=false -Dtsan_only=true
	ninja -C build-tsan
	$(TSAN_OPTS) meson test -C build-tsan --print-errorlogs --suite tsan

# every C file of the repository formatted as .clang-format says
check-format: deps
	git ls-files '*.c' '*.h' | xargs clang-format --dry-run --Werror

# The libFuzzer targets.  make check replays the committed corpus of each
# (tests/fuzz/corpus/<target>/, every crash found so far among it): a
# deterministic regression run.  Exploring is not in make check -- in two
# CI runs out of two it found a new input, so a commit that changed
# nothing could fail; `make fuzz FUZZ_SECONDS=600` explores on demand and
# leaves crash-* inputs in build-fuzz/ to add to the corpus with the fix.
FUZZ_TARGETS := views ops checkpoint
build-fuzz/build.ninja:
	CC=clang meson setup build-fuzz $(MESON_CI) -Dtests=false -Dfuzz=true \
		-Db_sanitize=address,undefined -Db_lundef=false

check-fuzz: deps build-fuzz/build.ninja
	ninja -C build-fuzz
	for t in $(FUZZ_TARGETS); do \
		$(FUZZ_OPTS) build-fuzz/tests/fuzz/fuzz_$$t -runs=0 \
			-rss_limit_mb=2048 tests/fuzz/corpus/$$t || exit 1; \
	done

fuzz: deps build-fuzz/build.ninja
	ninja -C build-fuzz
	for t in $(FUZZ_TARGETS); do \
		mkdir -p build-fuzz/corpus-$$t && \
		$(FUZZ_OPTS) build-fuzz/tests/fuzz/fuzz_$$t \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 \
			-artifact_prefix=build-fuzz/ -print_final_stats=1 \
			build-fuzz/corpus-$$t tests/fuzz/corpus/$$t || exit 1; \
	done

check: check-format check-normal check-clang check-asan check-tsan check-fuzz
	@echo "make check: all suites passed"

format:
	git ls-files '*.c' '*.h' | xargs clang-format -i

clean:
	rm -rf build build-clang build-asan build-tsan build-fuzz
