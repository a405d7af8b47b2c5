/*
 * What PAGEMAP_SCAN costs CRIU's dump with and without the PAGE_IS_FILE
 * category (scripts/criu-pagemap-scan-anon.patch), and what reading
 * /proc/self/smaps costs, over N MiB of touched private anonymous memory:
 *
 *   gcc -O2 -o /tmp/pagemap_scan benches/c/pagemap_scan.c && /tmp/pagemap_scan 1024
 *
 * The scan is asked what CRIU's pagemap cache asks: present or swapped
 * pages, neither the zero page nor (with "file") file-backed ones. Three
 * runs each; the kernel's walk is the same one a dump does in the freeze.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>

/* linux/fs.h of Linux >= 6.7; Debian 12's headers predate it. */
#define PAGE_IS_FILE (1 << 2)
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE_IS_SWAPPED (1 << 4)
#define PAGE_IS_PFNZERO (1 << 5)
#define PAGE_IS_SOFT_DIRTY (1 << 7)
struct page_region {
	uint64_t start, end, categories;
};
struct pm_scan_arg {
	uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
	uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)

static double now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv)
{
	size_t size = (size_t)(argc > 1 ? atoi(argv[1]) : 1024) << 20, pages = size / 4096;
	char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct page_region *regions = calloc(pages, sizeof(*regions));
	int fd = open("/proc/self/pagemap", O_RDONLY);
	char buf[4096];
	FILE *smaps;
	double t;

	if (mem == MAP_FAILED || !regions || fd < 0) {
		perror("set-up");
		return 1;
	}
	/* Redis asks the same: no transparent huge pages. */
	madvise(mem, size, MADV_NOHUGEPAGE);
	for (size_t i = 0; i < size; i += 4096)
		mem[i] = 1;
	for (int file = 1; file >= 0; file--) {
		for (int run = 0; run < 3; run++) {
			uint64_t excluded = PAGE_IS_PFNZERO | (file ? PAGE_IS_FILE : 0);
			struct pm_scan_arg a = {
				.size = sizeof(a),
				.start = (uintptr_t)mem,
				.end = (uintptr_t)mem + size,
				.vec = (uintptr_t)regions,
				.vec_len = pages,
				.category_inverted = excluded,
				.category_mask = excluded,
				.category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
				.return_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_SOFT_DIRTY,
			};
			long n;

			t = now_ms();
			n = ioctl(fd, PAGEMAP_SCAN, &a);
			if (n < 0) {
				perror("PAGEMAP_SCAN");
				return 1;
			}
			printf("PAGEMAP_SCAN %s PAGE_IS_FILE: %.2f ms (%ld regions)\n",
			       file ? "with   " : "without", now_ms() - t, n);
		}
	}
	t = now_ms();
	smaps = fopen("/proc/self/smaps", "r");
	while (smaps && fread(buf, 1, sizeof(buf), smaps) > 0)
		;
	if (smaps)
		fclose(smaps);
	printf("/proc/self/smaps read: %.2f ms\n", now_ms() - t);
	return 0;
}
