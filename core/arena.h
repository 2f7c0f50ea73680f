/* Bump allocator for per-step activations and saved tensors.
 *
 * Allocation is a pointer bump (64-byte aligned). When a step needs more than
 * the current block, overflow blocks are taken from malloc; arena_reset then
 * replaces everything with one block as large as the step's peak, so from the
 * second step on a training loop runs without malloc. */
#ifndef MX_CORE_ARENA_H
#define MX_CORE_ARENA_H

#include <stddef.h>

#include "core/tensor.h"

typedef struct arena_block arena_block;

/* Where an arena's blocks come from: host memory (NULL, the default) or
 * another allocator (the GPU's device memory: cuda/cuda.h's cu_arena_mem). */
typedef struct arena_mem {
    void *(*alloc)(size_t bytes); /* aligned to at least 64 bytes; fatal when out of memory */
    void (*release)(void *p);
    void (*zero)(void *p, size_t bytes);
} arena_mem;

typedef struct arena {
    char *base;           /* main block */
    size_t cap;           /* its size in bytes */
    size_t used;          /* bytes used in the main block */
    arena_block *overflow; /* extra blocks taken this step, newest first */
    size_t overflow_used; /* bytes handed out from overflow blocks */
    size_t peak;          /* largest used + overflow_used since the last reset */
    size_t grow_count;    /* how many times malloc was called (tests check steady state) */
    const arena_mem *mem; /* NULL: host memory */
} arena;

void arena_init(arena *a, size_t initial_bytes);
/* The same over other memory (blocks from mem; the arena's bookkeeping stays on the host). */
void arena_init_mem(arena *a, size_t initial_bytes, const arena_mem *mem);
void arena_free(arena *a);
void *arena_alloc(arena *a, size_t bytes);        /* 64-byte aligned, not zeroed */
void *arena_calloc(arena *a, size_t bytes);       /* zeroed */
tensor arena_tensor(arena *a, int ndim, const int64_t *shape); /* not zeroed */
/* Start a new step: all previous allocations become invalid. */
void arena_reset(arena *a);

/* Scoped temporaries: release everything allocated after the mark. */
typedef struct arena_mark {
    size_t used;
    arena_block *overflow;
    size_t overflow_used;
} arena_mark;
arena_mark arena_get_mark(const arena *a);
void arena_release(arena *a, arena_mark m);

#endif
