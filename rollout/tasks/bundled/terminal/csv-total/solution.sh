mkdir -p report
awk -F, 'NR > 1 { s += $3 } END { printf "%.2f\n", s }' data/sales.csv > report/total.txt
