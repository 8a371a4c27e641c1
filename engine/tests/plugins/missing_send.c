/* A vtable without the required send function. */
#include <sluice_sink.h>
static int32_t create(const SluiceHost *h, SluiceStr c, const SluiceCall *call, void **out) { (void)h; (void)c; (void)call; *out = (void *)1; return 0; }
static void destroy(void *s) { (void)s; }
static const SluiceSinkVTable VT = {
    SLUICE_ABI_MAJOR, 0, sizeof(SluiceSinkVTable), 0,
    { (const uint8_t *)"nosend", 6 }, { 0, 0 }, { 0, 0 }, { 0, 0 }, { 0, 0, 0, 0 }, create, 0, 0, 0, destroy,
};
const SluiceSinkVTable *sluice_sink_entry_v1(void) { return &VT; }
