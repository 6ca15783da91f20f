# The reliability suite's Perl workload: hashes, arrays, regular
# expressions, sort, sprintf and closures, printing deterministic results.
# Run as `perl workload.pl SCALE`.
use strict;
use warnings;

my $scale = $ARGV[0] // 1;
my %h;
for my $i (1 .. 60000 * $scale) {
    my $k = sprintf("k%06d", ($i * 7919) % 100003);
    push @{ $h{ substr($k, 0, 4) } }, { i => $i, k => $k, s => "x" x ($i % 40) };
}
my $total = 0;
for my $bucket (sort keys %h) {
    my @sorted = sort { $a->{k} cmp $b->{k} || $a->{i} <=> $b->{i} } @{ $h{$bucket} };
    $total += $sorted[0]{i} + scalar(@sorted);
}
print "buckets ", scalar(keys %h), " total $total\n";

my $text = join("\n", map { "user$_\@host" . ($_ % 17) . ".example id=$_" } 1 .. 30000 * $scale);
my (%hosts, $ids);
while ($text =~ /^user(\d+)\@host(\d+)\.example id=(\d+)$/mg) {
    $hosts{$2}++;
    $ids += $3 - $1;
}
(my $swapped = $text) =~ s/host(\d+)/H$1$1/g;
print "hosts ", join(",", map { "$_=$hosts{$_}" } sort { $a <=> $b } keys %hosts), " ids $ids len ", length($swapped), "\n";

my @adders = map { my $n = $_; sub { $_[0] + $n } } 1 .. 1000;
my $acc = 0;
$acc = $_->($acc) for @adders;
print "closures $acc\n";
