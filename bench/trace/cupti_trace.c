// A timeline tracer for the GPU machine, which has no Nsight Systems: loaded into any CUDA
// process by the driver (CUDA_INJECTION64_PATH=.../libcupti_trace.so), it records every kernel,
// copy, memset and driver API call through CUPTI's activity API and writes one text line per
// record to $LOSA_TRACE (default cupti-trace.txt):
//
//   K start end correlation stream blocks threads registers name   (a kernel, device clock ns)
//   M start end correlation copy-kind bytes                          (a copy)
//   S start end correlation bytes                                    (a memset)
//   A start end correlation thread api-name                          (a driver API call, host)
//
// CUPTI gives device and host records on one clock, so launch-to-start delays and idle gaps
// between kernels can be read off. `bench/trace_summary.py` turns a trace into per-step tables.
//
// Build (headers and libcupti from PyPI's nvidia-cuda-cupti and nvidia-cuda-runtime wheels):
//   bash bench/trace/build.sh
#include <cupti_activity.h>
#include <cupti_callbacks.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUFFER_BYTES (8u << 20)

static FILE *out;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static void CUPTIAPI buffer_requested(uint8_t **buffer, size_t *size, size_t *max_records) {
    *buffer = (uint8_t *)aligned_alloc(8, BUFFER_BYTES);
    *size = *buffer ? BUFFER_BYTES : 0;
    *max_records = 0;
}

static const char *api_name(CUpti_CallbackId cbid) {
    const char *name = NULL;
    if (cuptiGetCallbackName(CUPTI_CB_DOMAIN_DRIVER_API, cbid, &name) != CUPTI_SUCCESS || !name)
        return "?";
    return name;
}

static void write_record(CUpti_Activity *r) {
    switch (r->kind) {
    case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
    case CUPTI_ACTIVITY_KIND_KERNEL: {
        CUpti_ActivityKernel10 *k = (CUpti_ActivityKernel10 *)r;
        fprintf(out, "K %llu %llu %u %u %u %u %u %s\n", (unsigned long long)k->start,
                (unsigned long long)k->end, k->correlationId, k->streamId,
                k->gridX * k->gridY * k->gridZ, k->blockX * k->blockY * k->blockZ,
                k->registersPerThread, k->name ? k->name : "?");
        break;
    }
    case CUPTI_ACTIVITY_KIND_MEMCPY: {
        CUpti_ActivityMemcpy6 *m = (CUpti_ActivityMemcpy6 *)r;
        fprintf(out, "M %llu %llu %u %u %llu\n", (unsigned long long)m->start,
                (unsigned long long)m->end, m->correlationId, (unsigned)m->copyKind,
                (unsigned long long)m->bytes);
        break;
    }
    case CUPTI_ACTIVITY_KIND_MEMSET: {
        CUpti_ActivityMemset4 *m = (CUpti_ActivityMemset4 *)r;
        fprintf(out, "S %llu %llu %u %llu\n", (unsigned long long)m->start,
                (unsigned long long)m->end, m->correlationId, (unsigned long long)m->bytes);
        break;
    }
    case CUPTI_ACTIVITY_KIND_DRIVER: {
        CUpti_ActivityAPI *a = (CUpti_ActivityAPI *)r;
        fprintf(out, "A %llu %llu %u %u %s\n", (unsigned long long)a->start,
                (unsigned long long)a->end, a->correlationId, a->threadId, api_name(a->cbid));
        break;
    }
    default:
        break;
    }
}

static void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t *buffer, size_t size,
                                      size_t valid) {
    (void)ctx;
    (void)stream;
    (void)size;
    CUpti_Activity *record = NULL;
    pthread_mutex_lock(&out_lock);
    while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS)
        write_record(record);
    fflush(out);
    pthread_mutex_unlock(&out_lock);
    free(buffer);
}

static void finish(void) {
    cuptiActivityFlushAll(1);
    pthread_mutex_lock(&out_lock);
    if (out) {
        fclose(out);
        out = NULL;
    }
    pthread_mutex_unlock(&out_lock);
}

// The driver calls this once when CUDA_INJECTION64_PATH names this library.
int InitializeInjection(void) {
    const char *path = getenv("LOSA_TRACE");
    out = fopen(path ? path : "cupti-trace.txt", "w");
    if (!out) {
        perror("cupti_trace: cannot open the trace file");
        return 0;
    }
    if (cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed) != CUPTI_SUCCESS) {
        fprintf(stderr, "cupti_trace: cuptiActivityRegisterCallbacks failed\n");
        return 0;
    }
    CUpti_ActivityKind kinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
                                  CUPTI_ACTIVITY_KIND_MEMSET, CUPTI_ACTIVITY_KIND_DRIVER};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        if (cuptiActivityEnable(kinds[i]) != CUPTI_SUCCESS)
            fprintf(stderr, "cupti_trace: cannot enable activity kind %d\n", (int)kinds[i]);
    }
    atexit(finish);
    return 1;
}
