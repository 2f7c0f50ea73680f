/* Inside the GPU backend: checked CUDA calls. */
#ifndef MX_CUDA_INTERNAL_H
#define MX_CUDA_INTERNAL_H

#include <cuda_runtime.h>

extern "C" {
#include "core/error.h"
}

#define CU_CHECK(call)                                                                                   \
    do {                                                                                                 \
        cudaError_t cu_e_ = (call);                                                                      \
        if (cu_e_ != cudaSuccess) mx_fatal(__FILE__, __LINE__, "CUDA error %d (%s) in %s", (int)cu_e_,   \
                                           cudaGetErrorString(cu_e_), #call);                            \
    } while (0)
/* After a kernel launch: launch errors now, execution errors at the next sync. */
#define CU_CHECK_LAUNCH() CU_CHECK(cudaGetLastError())

#endif
