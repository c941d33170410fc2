"""The AUC of a score for one class against the other, shared by tools/plot.py and
tools/feature_ceiling.py. Standard library only."""


def auc(pos, neg):
    """P(score of a positive > score of a negative), ties count half (Mann-Whitney with average
    ranks); None when either list is empty."""
    if not pos or not neg:
        return None
    allv = sorted([(v, 1) for v in pos] + [(v, 0) for v in neg])
    i = 0
    rank_sum = 0.0
    while i < len(allv):
        j = i
        while j < len(allv) and allv[j][0] == allv[i][0]:
            j += 1
        r = (i + j + 1) / 2.0  # average 1-based rank
        rank_sum += r * sum(1 for k in range(i, j) if allv[k][1] == 1)
        i = j
    n1, n0 = len(pos), len(neg)
    return (rank_sum - n1 * (n1 + 1) / 2.0) / (n1 * n0)


def rank_auc(score, pos):
    """auc() of score for the entries where pos is true against the rest."""
    return auc([float(v) for v, p in zip(score, pos) if p], [float(v) for v, p in zip(score, pos) if not p])
