/* Peak floating-point rate of this CPU, for benchmarks/speed.py.

   Every kernel runs N independent accumulator chains per thread (N covers latency x
   throughput: 2 FMA ports x 4-cycle latency needs at least 8), one OpenMP thread per core
   (pin them with OMP_PLACES=cores OMP_PROC_BIND=spread), for a calibrated time per repetition
   after a warm-up of the same length, so the clocks have settled. Each kernel is compiled for
   its instruction set by a function attribute, so one build holds them all; the caller runs
   only those the CPU has.

     fp32: avx2_N (8 lanes, vfmadd), avx512_N (16 lanes, vfmadd; double-pumped on AMD Zen 4)
     bf16: bf16_N (vdpbf16ps, AVX512-BF16: 32 products into 16 fp32 lanes, 64 flop)
           amx (tdpbf16ps, AMX-BF16: 16 x 16 x 32 products per instruction, 16384 flop)

   usage: peak KERNEL SECONDS_PER_REP REPS
   prints the best GFLOP/s of all threads together, then the CPU each thread ran on. */
#define _GNU_SOURCE
#include <immintrin.h>
#include <omp.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define FP32_KERNEL(NAME, TARGET, VEC, SET1, FMA, FIRST, N, FLOP)                     \
  __attribute__((target(TARGET))) static double NAME(long iters, float *sink) {      \
    VEC acc[N];                                                                       \
    VEC b = SET1(0.9999999f), c = SET1(1e-7f); /* converges: no overflow, no denormals */ \
    for (int i = 0; i < N; i++) acc[i] = SET1((float)i * 1e-3f);                      \
    for (long n = 0; n < iters; n++) {                                                \
      _Pragma("GCC unroll 32") for (int i = 0; i < N; i++) acc[i] = FMA(acc[i], b, c); \
    }                                                                                 \
    float s = 0;                                                                      \
    for (int i = 0; i < N; i++) s += FIRST(acc[i]);                                   \
    *sink += s;                                                                       \
    return (double)FLOP * N * (double)iters;                                          \
  }

#define FMA512(a, b, c) _mm512_fmadd_ps(a, b, c)
#define FMA256(a, b, c) _mm256_fmadd_ps(a, b, c)
FP32_KERNEL(avx2_10, "avx2,fma", __m256, _mm256_set1_ps, FMA256, _mm256_cvtss_f32, 10, 16)
FP32_KERNEL(avx2_12, "avx2,fma", __m256, _mm256_set1_ps, FMA256, _mm256_cvtss_f32, 12, 16)
FP32_KERNEL(avx2_14, "avx2,fma", __m256, _mm256_set1_ps, FMA256, _mm256_cvtss_f32, 14, 16)
FP32_KERNEL(avx512_12, "avx512f,fma", __m512, _mm512_set1_ps, FMA512, _mm512_cvtss_f32, 12, 32)
FP32_KERNEL(avx512_16, "avx512f,fma", __m512, _mm512_set1_ps, FMA512, _mm512_cvtss_f32, 16, 32)
FP32_KERNEL(avx512_24, "avx512f,fma", __m512, _mm512_set1_ps, FMA512, _mm512_cvtss_f32, 24, 32)

#define BF16_KERNEL(NAME, N)                                                          \
  __attribute__((target("avx512f,avx512bf16"))) static double NAME(long iters,       \
                                                                  float *sink) {     \
    __m512 acc[N];                                                                    \
    __m512bh x = (__m512bh)_mm512_set1_epi16(0x3380); /* 6e-8 */                      \
    __m512bh y = (__m512bh)_mm512_set1_epi16(0x3f80); /* 1 */                         \
    for (int i = 0; i < N; i++) acc[i] = _mm512_set1_ps((float)i);                    \
    for (long n = 0; n < iters; n++) {                                                \
      _Pragma("GCC unroll 32") for (int i = 0; i < N; i++)                            \
          acc[i] = _mm512_dpbf16_ps(acc[i], x, y);                                    \
    }                                                                                 \
    float s = 0;                                                                      \
    for (int i = 0; i < N; i++) s += _mm512_cvtss_f32(acc[i]);                        \
    *sink += s;                                                                       \
    return 64.0 * N * (double)iters;                                                  \
  }
BF16_KERNEL(bf16_12, 12)
BF16_KERNEL(bf16_16, 16)
BF16_KERNEL(bf16_24, 24)

/* AMX: four independent 16 x 16 fp32 accumulator tiles, each fed by two bf16 tiles. */
struct tile_config {
  uint8_t palette_id, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

__attribute__((target("amx-tile,amx-bf16"))) static double amx(long iters, float *sink) {
  static __thread uint16_t a[16 * 32] __attribute__((aligned(64)));
  static __thread float out[16 * 16] __attribute__((aligned(64)));
  struct tile_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.palette_id = 1;
  for (int t = 0; t < 8; t++) cfg.rows[t] = 16, cfg.colsb[t] = 64;
  for (int i = 0; i < 16 * 32; i++) a[i] = 0x3380;
  _tile_loadconfig(&cfg);
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  _tile_loadd(4, a, 64); _tile_loadd(5, a, 64); _tile_loadd(6, a, 64); _tile_loadd(7, a, 64);
  for (long n = 0; n < iters; n++) {
    _tile_dpbf16ps(0, 4, 5);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 6, 5);
    _tile_dpbf16ps(3, 6, 7);
  }
  _tile_stored(0, out, 64);
  _tile_release();
  *sink += out[0];
  return 4.0 * 16 * 16 * 32 * 2 * (double)iters;
}

typedef double (*kernel_fn)(long, float *);
static const struct {
  const char *name;
  kernel_fn fn;
} KERNELS[] = {{"avx2_10", avx2_10},     {"avx2_12", avx2_12},     {"avx2_14", avx2_14},
               {"avx512_12", avx512_12}, {"avx512_16", avx512_16}, {"avx512_24", avx512_24},
               {"bf16_12", bf16_12},     {"bf16_16", bf16_16},     {"bf16_24", bf16_24},
               {"amx", amx}};

/* GFLOP/s of all threads together for one run of `iters` rounds per thread. */
static double once(kernel_fn fn, long iters, double *seconds) {
  float sink = 0;
  double flop = 0;
  double t0 = omp_get_wtime();
#pragma omp parallel reduction(+ : sink, flop)
  flop += fn(iters, &sink);
  *seconds = omp_get_wtime() - t0;
  if (sink == 42.0f) printf("#");
  return flop / *seconds / 1e9;
}

int main(int argc, char **argv) {
  kernel_fn fn = NULL;
  for (size_t i = 0; argc == 4 && i < sizeof KERNELS / sizeof *KERNELS; i++)
    if (!strcmp(argv[1], KERNELS[i].name)) fn = KERNELS[i].fn;
  if (!fn) {
    fprintf(stderr, "usage: peak KERNEL SECONDS_PER_REP REPS\n");
    return 2;
  }
  if (fn == amx && syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */,
                           18 /* XFEATURE_XTILEDATA */) != 0) {
    fprintf(stderr, "the kernel refused AMX tile data\n");
    return 3;
  }
  double target = atof(argv[2]), dt = 0, best = 0;
  int reps = atoi(argv[3]);
  long iters = 1 << 12;
  while (once(fn, iters, &dt), dt < 0.05) iters *= 4; /* calibrate */
  iters = (long)(iters * target / dt) + 1;
  once(fn, iters, &dt); /* warm-up as long as a repetition: the clocks settle */
  for (int r = 0; r < reps; r++) {
    double g = once(fn, iters, &dt);
    if (g > best) best = g;
  }
  printf("%f", best);
#pragma omp parallel
  {
#pragma omp critical
    printf(" %d", sched_getcpu());
  }
  printf("\n");
  return 0;
}
