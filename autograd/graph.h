/* Define-by-run reverse-mode autograd.
 *
 * Each forward op computes its output, and when gradients are on, appends a
 * node to the tape: its inputs, its output, and what it saved for backward.
 * ag_backward(loss) walks the tape in reverse, calling each op's backward
 * function from the op table (ag_op_table, indexed by ag_op). Backward
 * functions accumulate (+=) into their inputs' gradients.
 *
 * Memory: outputs, saved tensors and intermediate gradients come from the
 * context's arena, reset each step (ag_ctx_reset). Parameters are ag_vars whose
 * value and grad point into a model's flat parameter/gradient buffers.
 *
 * Devices: a context made for the GPU (ag_ctx_use_gpu) keeps every tensor's
 * data in device memory (its arenas and gradient pool allocate there) and
 * each op runs its CUDA kernels (cuda/cuda.h) instead of its CPU loops, with
 * the same arithmetic; the tape, the variables and what ops save about
 * themselves stay on the host (ctx->meta). An op's CPU and GPU versions sit
 * side by side in its ops_*.c file. */
#ifndef MX_AUTOGRAD_GRAPH_H
#define MX_AUTOGRAD_GRAPH_H

#include <stdbool.h>
#include <stdint.h>

#include "core/arena.h"
#include "core/tensor.h"

typedef struct ag_var {
    tensor value;        /* contiguous */
    float *grad;         /* same layout as value; NULL until a gradient arrives */
    bool requires_grad;
    bool is_leaf;        /* parameters and inputs: gradients accumulate across backward calls */
} ag_var;

typedef enum ag_op {
    AG_OP_LINEAR,
    AG_OP_MATMUL,
    AG_OP_CONV2D,
    AG_OP_BATCHNORM2D,
    AG_OP_LAYERNORM,
    AG_OP_RELU,
    AG_OP_GELU,
    AG_OP_GELU_TANH,
    AG_OP_SOFTMAX,
    AG_OP_ATTENTION,
    AG_OP_MAXPOOL2D,
    AG_OP_AVGPOOL_GLOBAL,
    AG_OP_ADD,
    AG_OP_RESHAPE,
    AG_OP_PERMUTE,
    AG_OP_CONCAT,
    AG_OP_SLICE,
    AG_OP_DROPOUT,
    AG_OP_DROP_PATH,
    AG_OP_CROSS_ENTROPY,
    AG_OP_MEAN,
    AG_OP_SUM,
    AG_OP_COUNT
} ag_op;

#define AG_MAX_INPUTS 5

typedef struct ag_node {
    ag_op op;
    ag_var *out;
    ag_var *in[AG_MAX_INPUTS];
    int n_in;
    void *saved; /* op-specific, in the arena */
} ag_node;

struct ag_ctx;
typedef void (*ag_backward_fn)(struct ag_ctx *ctx, ag_node *node);

typedef struct ag_op_info {
    const char *name;
    ag_backward_fn backward;
    bool bf16_out;          /* an elementwise result: ag_record rounds the output to bfloat16
                               under quant.elementwise = bf16 (fused ops round inside) */
} ag_op_info;

extern const ag_op_info ag_op_table[AG_OP_COUNT];

struct mm_policy;

/* A gradient buffer of the pool (see ag_grad). */
typedef struct ag_buf {
    float *p;
    size_t bytes;
    bool used;
} ag_buf;

/* What the step is: set by its caller (trainer, bench, tests), read by the ops. */
typedef struct ag_run {
    bool grad_enabled;      /* false: no tape (evaluation) */
    bool training;          /* batch statistics for BN, dropout and drop-path active */
    bool elementwise_bf16;  /* quant.elementwise = bf16: ops flagged in the op table round
                               their outputs to bfloat16 (emulating BF16 vector units);
                               gradients pass straight through */
    uint64_t seed;          /* randomness: dropout masks use stream (step, call) */
    uint64_t step;
    struct mm_plan *mm;     /* every product site's quantization, resolved (NULL: fp32) */
    int64_t conv_chunk_bytes; /* im2col bytes per conv chunk; 0: 1.25 MB per thread on the CPU,
                                 512 MB on the GPU (train.gpu_chunk_mb); tests set a tiny value
                                 to cover many chunks */
    bool cpu_bf16;            /* CPU: products of two quantized operands on the BF16 units
                                 (core/gemm.h's gemm_bf16_f32; train.cpu_gemm = auto) */
    bool sync_bn;             /* several ranks: BatchNorm's batch statistics over all of them (train.sync_bn) */
    bool cpu_f32_dnnl;        /* CPU: the other products through oneDNN's f32 matmul, not OpenBLAS
                                 (gemm_dnnl_f32; train.cpu_gemm = auto where it is preferred) */
    bool cpu_conv_dnnl;       /* CPU: convolutions whose products run on oneDNN (cpu_f32_dnnl, cpu_bf16) as its
                                 direct kernels (train.cpu_conv = auto) */
    bool gpu_fp32_gemm;       /* GPU: every product as an FP32 GEMM on the quantized values
                                 (train.gpu_gemm = fp32): the CPU's arithmetic up to the order
                                 of sums. Default: bf16-held pairs on the tensor cores, whose
                                 FP32 accumulation rounds unlike IEEE adds (docs/gpu.md) */
    bool gpu_conv_cudnn;      /* GPU: convolutions of two float32 operands through cuDNN instead
                                 of gather + cuBLAS (train.gpu_conv = cudnn: less memory, slower
                                 on the H200 in NHWC; docs/performance.md) */
    bool gpu_unchecked_bf16;  /* GPU: quantized operands reach the tensor cores as bf16 without a
                                 sync each to check that bf16 holds them; the caller asks
                                 cu_quant_inexact_take() after the step and, if some value was
                                 not bf16-exact, runs the step again without this (the checked
                                 path then multiplies those operands in FP32). Ignored while
                                 statistics are collected (those calls sync anyway). */
} ag_run;

/* Where a step's time goes, per op (bench step --profile). An op's forward
 * time is the time from the previous op's ag_record to its own (its work and
 * the model code just before it), its backward time that of its backward
 * function; on the GPU each is synchronized first, which serializes the step. */
typedef enum ag_prof_part { /* time inside the products (autograd/mm*.c), across ops */
    AG_PROF_PRODUCT,    /* mm_gemm_*: GEMMs with their gathers (and, for 1d dW, row quantization) */
    AG_PROF_GATHER,     /* CPU im2col gathers and col2im scatters, inside PRODUCT */
    AG_PROF_QUANT,      /* operand quantization before the products */
    AG_PROF_QUANT_ROWS, /* the 1d dW operand's quantization down M, inside PRODUCT */
    AG_PROF_PART_COUNT
} ag_prof_part;

typedef struct ag_prof {
    double fwd_s[AG_OP_COUNT], bwd_s[AG_OP_COUNT];
    double part_s[AG_PROF_PART_COUNT];
    int64_t calls[AG_OP_COUNT];
    double mark; /* when the last op recorded (or the step began) */
} ag_prof;

/* The tape and the step's memory, plus the settings it runs under. */
typedef struct ag_ctx {
    ag_run run;
    bool gpu;               /* tensors live on the GPU and ops run there (ag_ctx_use_gpu) */
    arena ar;               /* per-step tensor data: outputs, saved tensors, leaf gradients */
    arena meta;             /* per-step host memory: variables and what ops save about themselves */
    ag_buf *bufs;           /* gradients of non-leaf variables: a buffer returns to the
                               pool once its node's backward has run, so the backward
                               holds a few at a time instead of one per activation */
    int n_bufs;
    int64_t cap_bufs;
    arena scratch;          /* per-call temporaries (im2col chunks, transient quantized copies):
                               marked and released around each product */
    ag_node *nodes;         /* the tape; capacity persists across steps */
    int n_nodes;
    int64_t cap_nodes;
    uint64_t rng_calls;     /* per-step counter of dropout streams drawn */
    int64_t flops;          /* GEMM floating-point operations since the caller last zeroed it */
    ag_prof *prof;          /* NULL: no per-op timing (the caller owns it; it accumulates) */
    /* called after node i's backward has run (data-parallel gradient buckets
       start their sums as soon as every node that feeds them has run) */
    void (*after_node)(void *user, const struct ag_ctx *ctx, int i);
    void *after_user;
} ag_ctx;

void ag_ctx_init(ag_ctx *ctx, size_t arena_bytes);
/* Moves a fresh context to the GPU (cu_init done): from here on tensor data
 * is device memory (inputs and parameters given to ops must be too). */
void ag_ctx_use_gpu(ag_ctx *ctx);
/* Memory of the context's kind outside the arenas (host, or device when on the GPU). */
void *ag_mem_alloc(const ag_ctx *ctx, size_t bytes);
void ag_mem_free(const ag_ctx *ctx, void *p);
void ag_mem_zero(const ag_ctx *ctx, void *p, size_t bytes);
/* Copies between host memory and the context's memory (plain memcpy on the CPU). */
void ag_mem_upload(const ag_ctx *ctx, void *dst, const void *host_src, size_t bytes);
void ag_mem_download(const ag_ctx *ctx, void *host_dst, const void *src, size_t bytes);
void ag_ctx_free(ag_ctx *ctx);
/* New step: forgets the tape and every arena tensor. */
void ag_ctx_reset(ag_ctx *ctx);
/* Bytes held by the gradient pool (steady after the first step). */
size_t ag_grad_pool_bytes(const ag_ctx *ctx);

/* A new non-leaf variable (arena storage, uninitialised). */
ag_var *ag_new(ag_ctx *ctx, int ndim, const int64_t *shape);
/* A leaf over caller-owned storage (parameters, inputs). */
ag_var ag_leaf(float *data, float *grad, int ndim, const int64_t *shape);
/* Gradient buffer of v, allocated zeroed if absent (non-leaf: from the pool,
 * valid until v's producing node has run its backward). */
float *ag_grad(ag_ctx *ctx, ag_var *v);
int64_t ag_numel(const ag_var *v);

/* Called by every op once its output is computed: rounds the output when the
 * op is flagged bf16_out and the run asks for it, then appends a node when
 * gradients are on and some input needs one; returns NULL otherwise (the op
 * then saves nothing). Sets out->requires_grad. */
ag_node *ag_record(ag_ctx *ctx, ag_op op, ag_var *out, ag_var *const *in, int n_in);
/* Whether ag_record will record (decides before the forward what to save). */
bool ag_will_record(const ag_ctx *ctx, ag_var *const *in, int n_in);
void *ag_save(ag_ctx *ctx, ag_node *node, size_t bytes);

/* Times a part of an op into ctx->prof (no-ops without one):
 *   double t0 = ag_prof_start(ctx); ...; ag_prof_stop(ctx, AG_PROF_GATHER, t0); */
double ag_prof_start(const ag_ctx *ctx);
void ag_prof_stop(const ag_ctx *ctx, ag_prof_part part, double t0);

/* Reverse pass from a scalar loss: d loss / d loss = 1. */
void ag_backward(ag_ctx *ctx, ag_var *loss);
/* Reverse pass from any variable y with a given d(something)/dy (host memory, copied). */
void ag_backward_from(ag_ctx *ctx, ag_var *y, const float *dy);

#endif
