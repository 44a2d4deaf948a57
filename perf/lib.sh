# Helpers shared by perf/*.sh (sourced).

# busy_cores: the whole machine's busy time over 0.5 s, in cores (user+nice+system+irq+softirq).
busy_cores() {
  local a b
  a="$(head -1 /proc/stat)"; sleep 0.5; b="$(head -1 /proc/stat)"
  awk -v a="$a" -v b="$b" -v hz="$(getconf CLK_TCK)" 'BEGIN {
    split(a, x, " "); split(b, y, " ");
    busy = (y[2]+y[3]+y[4]+y[7]+y[8]) - (x[2]+x[3]+x[4]+x[7]+x[8]);
    printf "%.2f", busy / hz / 0.5 }'
}
