/* STAND-IN for libnvidia-ml.so.1 on a gpuprov simulated host. There is no GPU and no NVIDIA driver here.
 *
 * The lab compiles this at test time (`cc -shared -fPIC`) and puts it in each sim host's own view of
 * /usr/lib/x86_64-linux-gnu (an overlay in the host's mount namespace), so the REAL nvidia-ml-py (pynvml) on the
 * host loads it with CDLL("libnvidia-ml.so.1") as it would load the driver's. Every answer comes from
 * /usr/local/share/gpuprov-sim/nvml.txt, which the lab writes from the same recorded `nvidia-smi -q -x` file the
 * stand-in nvidia-smi reads: the two paths cannot disagree by construction, only through a parser's bug.
 *
 * nvml.txt: one "key value" per line — mode (empty, driver-not-loaded, mismatch, no-permission), driver, cuda
 * (as NVML encodes it: 12020 for 12.2), count, then per GPU i: gpu.i.name, .uuid, .pci, .mem_total, .mem_free,
 * .mem_used (bytes), .cc_major, .cc_minor, .mig (0/1, current and pending), .util_gpu, .util_mem. The failure
 * modes return the codes and words of the real driver (nvmlErrorString).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DATA "/usr/local/share/gpuprov-sim/nvml.txt"
#define MAX_GPUS 16

typedef int nvmlReturn_t;
enum { OK = 0, ERR_UNINITIALIZED = 1, ERR_INVALID_ARGUMENT = 2, ERR_NOT_SUPPORTED = 3, ERR_NO_PERMISSION = 4,
       ERR_INSUFFICIENT_SIZE = 7, ERR_DRIVER_NOT_LOADED = 9, ERR_LIB_RM_VERSION_MISMATCH = 18, ERR_UNKNOWN = 999 };

typedef struct {
    char name[96], uuid[96], pci[32];
    unsigned long long mem_total, mem_free, mem_used;
    int cc_major, cc_minor;
    unsigned int mig, util_gpu, util_mem;
} gpu_t;

typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

static gpu_t gpus[MAX_GPUS];
static unsigned int count;
static char driver[80], mode[64];
static int cuda, inited;

static void set(const char *key, const char *val) {
    int i;
    char field[32];
    if (!strcmp(key, "mode")) snprintf(mode, sizeof mode, "%s", val);
    else if (!strcmp(key, "driver")) snprintf(driver, sizeof driver, "%s", val);
    else if (!strcmp(key, "cuda")) cuda = atoi(val);
    else if (!strcmp(key, "count")) count = (unsigned)atoi(val) > MAX_GPUS ? MAX_GPUS : (unsigned)atoi(val);
    else if (sscanf(key, "gpu.%d.%31s", &i, field) == 2 && i >= 0 && i < MAX_GPUS) {
        gpu_t *g = &gpus[i];
        if (!strcmp(field, "name")) snprintf(g->name, sizeof g->name, "%s", val);
        else if (!strcmp(field, "uuid")) snprintf(g->uuid, sizeof g->uuid, "%s", val);
        else if (!strcmp(field, "pci")) snprintf(g->pci, sizeof g->pci, "%s", val);
        else if (!strcmp(field, "mem_total")) g->mem_total = strtoull(val, NULL, 10);
        else if (!strcmp(field, "mem_free")) g->mem_free = strtoull(val, NULL, 10);
        else if (!strcmp(field, "mem_used")) g->mem_used = strtoull(val, NULL, 10);
        else if (!strcmp(field, "cc_major")) g->cc_major = atoi(val);
        else if (!strcmp(field, "cc_minor")) g->cc_minor = atoi(val);
        else if (!strcmp(field, "mig")) g->mig = (unsigned)atoi(val);
        else if (!strcmp(field, "util_gpu")) g->util_gpu = (unsigned)atoi(val);
        else if (!strcmp(field, "util_mem")) g->util_mem = (unsigned)atoi(val);
    }
}

static nvmlReturn_t load(void) {
    char line[512];
    const char *path = getenv("GPUPROV_STANDIN_NVML_DATA"); /* unit tests; sshd passes no environment to hosts */
    FILE *f = fopen(path && *path ? path : DATA, "r");
    if (!f) return ERR_DRIVER_NOT_LOADED;
    count = 0;
    mode[0] = driver[0] = 0;
    while (fgets(line, sizeof line, f)) {
        char *sp, *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        sp = strchr(line, ' ');
        if (!sp) { set(line, ""); continue; }
        *sp = 0;
        set(line, sp + 1);
    }
    fclose(f);
    if (!strcmp(mode, "driver-not-loaded")) return ERR_DRIVER_NOT_LOADED;
    if (!strcmp(mode, "mismatch")) return ERR_LIB_RM_VERSION_MISMATCH;
    if (!strcmp(mode, "no-permission")) return ERR_NO_PERMISSION;
    return OK;
}

static nvmlReturn_t copy_str(char *out, unsigned int len, const char *s) {
    if (!out) return ERR_INVALID_ARGUMENT;
    if (strlen(s) + 1 > len) return ERR_INSUFFICIENT_SIZE;
    strcpy(out, s);
    return OK;
}

static gpu_t *dev(void *handle) {
    gpu_t *g = (gpu_t *)handle;
    return (inited && g >= gpus && g < gpus + count) ? g : NULL;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    nvmlReturn_t r;
    (void)flags;
    r = load();
    inited = (r == OK);
    return r;
}
nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlShutdown(void) {
    if (!inited) return ERR_UNINITIALIZED;
    inited = 0;
    return OK;
}

const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case OK: return "Success";
    case ERR_UNINITIALIZED: return "Uninitialized";
    case ERR_INVALID_ARGUMENT: return "Invalid Argument";
    case ERR_NOT_SUPPORTED: return "Not Supported";
    case ERR_NO_PERMISSION: return "Insufficient Permissions";
    case ERR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case ERR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case ERR_LIB_RM_VERSION_MISMATCH: return "RM has detected an NVML/RM version mismatch.";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *out, unsigned int len) {
    return inited ? copy_str(out, len, driver) : ERR_UNINITIALIZED;
}
nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) {
    if (!inited) return ERR_UNINITIALIZED;
    if (!v) return ERR_INVALID_ARGUMENT;
    *v = cuda;
    return OK;
}
nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v) { return nvmlSystemGetCudaDriverVersion(v); }

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n) {
    if (!inited) return ERR_UNINITIALIZED;
    if (!n) return ERR_INVALID_ARGUMENT;
    *n = count;
    return OK;
}
nvmlReturn_t nvmlDeviceGetCount(unsigned int *n) { return nvmlDeviceGetCount_v2(n); }

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, void **handle) {
    if (!inited) return ERR_UNINITIALIZED;
    if (!handle || i >= count) return ERR_INVALID_ARGUMENT;
    *handle = &gpus[i];
    return OK;
}
nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int i, void **handle) { return nvmlDeviceGetHandleByIndex_v2(i, handle); }

nvmlReturn_t nvmlDeviceGetName(void *h, char *out, unsigned int len) {
    gpu_t *g = dev(h);
    return g ? copy_str(out, len, g->name) : ERR_INVALID_ARGUMENT;
}
nvmlReturn_t nvmlDeviceGetUUID(void *h, char *out, unsigned int len) {
    gpu_t *g = dev(h);
    if (!g) return ERR_INVALID_ARGUMENT;
    return g->uuid[0] ? copy_str(out, len, g->uuid) : ERR_NOT_SUPPORTED;
}
nvmlReturn_t nvmlDeviceGetPciInfo_v3(void *h, nvmlPciInfo_t *p) {
    gpu_t *g = dev(h);
    unsigned int domain = 0, bus = 0, device = 0;
    if (!g || !p) return ERR_INVALID_ARGUMENT;
    if (!g->pci[0]) return ERR_NOT_SUPPORTED;
    memset(p, 0, sizeof *p);
    sscanf(g->pci, "%x:%x:%x", &domain, &bus, &device);
    p->domain = domain;
    p->bus = bus;
    p->device = device;
    snprintf(p->busId, sizeof p->busId, "%s", g->pci);
    snprintf(p->busIdLegacy, sizeof p->busIdLegacy, "%s", g->pci + (strlen(g->pci) > 12 ? 4 : 0));
    return OK;
}
nvmlReturn_t nvmlDeviceGetMemoryInfo(void *h, nvmlMemory_t *m) {
    gpu_t *g = dev(h);
    if (!g || !m) return ERR_INVALID_ARGUMENT;
    if (!g->mem_total) return ERR_NOT_SUPPORTED;
    m->total = g->mem_total;
    m->free = g->mem_free;
    m->used = g->mem_used;
    return OK;
}
nvmlReturn_t nvmlDeviceGetCudaComputeCapability(void *h, int *major, int *minor) {
    gpu_t *g = dev(h);
    if (!g || !major || !minor) return ERR_INVALID_ARGUMENT;
    if (!g->cc_major) return ERR_NOT_SUPPORTED;
    *major = g->cc_major;
    *minor = g->cc_minor;
    return OK;
}
nvmlReturn_t nvmlDeviceGetMigMode(void *h, unsigned int *current, unsigned int *pending) {
    gpu_t *g = dev(h);
    if (!g || !current || !pending) return ERR_INVALID_ARGUMENT;
    *current = *pending = g->mig;
    return OK;
}
nvmlReturn_t nvmlDeviceGetUtilizationRates(void *h, nvmlUtilization_t *u) {
    gpu_t *g = dev(h);
    if (!g || !u) return ERR_INVALID_ARGUMENT;
    u->gpu = g->util_gpu;
    u->memory = g->util_mem;
    return OK;
}
