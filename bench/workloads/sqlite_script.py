"""Write the SQL script of the sqlite3 workload to stdout: ROWS inserts in
transactions of 10,000, an index built afterwards, then the queries a
reporting job would run (aggregates, an indexed range, a join, LIKE).
The sqlite3 shell parses every statement, so the parser's and the page
cache's mallocs are part of what is measured.
Usage: sqlite_script.py [rows]
"""
import sys

rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
out = sys.stdout
out.write("PRAGMA synchronous=OFF;\n")  # measure the engine, not fsync
out.write("CREATE TABLE customer(id INTEGER PRIMARY KEY, name TEXT, region INTEGER);\n")
out.write("CREATE TABLE orders(id INTEGER PRIMARY KEY, customer INTEGER, amount REAL, note TEXT);\n")
out.write("BEGIN;\n")
for c in range(1000):
    out.write(f"INSERT INTO customer VALUES({c},'customer {c:04d}',{c % 17});\n")
out.write("COMMIT;\n")
rng = 88172645463325252
for i in range(rows):
    if i % 10000 == 0:
        out.write("BEGIN;\n")
    rng ^= (rng << 13) & 0xFFFFFFFFFFFFFFFF
    rng ^= rng >> 7
    rng ^= (rng << 17) & 0xFFFFFFFFFFFFFFFF
    out.write(f"INSERT INTO orders(customer,amount,note) VALUES({rng % 1000},{rng % 100000 / 100},"
              f"'order {i} item {rng % 9973} {'rush' if rng % 11 == 0 else 'normal'}');\n")
    if i % 10000 == 9999 or i == rows - 1:
        out.write("COMMIT;\n")
out.write("CREATE INDEX orders_customer ON orders(customer, amount);\n")
out.write("SELECT count(*), sum(amount), avg(amount) FROM orders;\n")
out.write("SELECT customer, count(*), max(amount) FROM orders GROUP BY customer ORDER BY 3 DESC LIMIT 10;\n")
for c in range(0, 1000, 50):
    out.write(f"SELECT count(*), sum(amount) FROM orders WHERE customer={c} AND amount>100;\n")
out.write("SELECT c.region, count(*), sum(o.amount) FROM orders o JOIN customer c ON c.id=o.customer "
          "GROUP BY c.region ORDER BY c.region;\n")
out.write("SELECT count(*) FROM orders WHERE note LIKE '%rush%';\n")
out.write("UPDATE orders SET amount=amount*1.1 WHERE customer<100;\n")
out.write("DELETE FROM orders WHERE id % 7 = 0;\n")
out.write("SELECT count(*), sum(amount) FROM orders;\n")
