"""Embedded name lists (common in England) and nickname pairs, for social care client records.

Lists are in rough order of frequency; the generator draws with Zipf-like weights so that
common names repeat, as they do in real registers (which is what makes name linkage hard).
"""

from __future__ import annotations

MALE = """
Oliver George Harry Jack Jacob Noah Charlie Muhammad Thomas Oscar William James Henry Leo
Alfie Joshua Freddie Archie Ethan Isaac Alexander Joseph Edward Samuel Max Daniel Arthur Lucas
Mohammed Logan Theo Harrison Benjamin Mason Sebastian Finley Adam Dylan Zachary Riley Teddy
Theodore David Elijah Jaxon Toby Louie Reuben Arlo Hugo Luca Jude Tommy Frankie Ronnie Albert
Elliot Rory Carter Stanley Michael Louis Ezra Hunter Jenson Matthew Gabriel Ryan Caleb Dexter
Elliott Tyler Ollie Jayden Liam Nathan Ben Luke
"""

MALE_CLASSIC = """
Christopher Andrew Mark Paul Steven Richard
Robert John Peter Anthony Kevin Stephen Ian Gary Simon Martin Neil Graham Colin Keith Brian
Alan Derek Kenneth Raymond Dennis Roy Barry Trevor Malcolm Geoffrey Gordon Ronald Harold
Frederick Ernest Walter Leonard Stanley Norman Donald Douglas Eric Frank Leslie Sidney Cyril
Bernard Clifford Philip Terence Roger Nigel Craig Darren Lee Wayne Jason Shaun Scott Dean
Carl Stuart Adrian Jonathan Timothy Nicholas Patrick Sean Kieran Connor Callum Jordan Bradley
Jamie Aaron Ashley Kyle Imran Asif Tariq Bilal Hamza Yusuf Ibrahim Omar Ali Hassan Arjun
Rohan Sanjay Rajesh Vikram Piotr Tomasz Krzysztof Marek
"""

FEMALE = """
Olivia Amelia Isla Ava Mia Ivy Lily Isabella Rosie Sophia Grace Willow Freya Florence Emily
Ella Poppy Evie Elsie Charlotte Evelyn Sienna Sofia Daisy Phoebe Sophie Alice Harper Matilda
Ruby Emilia Maya Isabelle Millie Eva Luna Esme Jessica Layla Lucy Chloe Holly Ellie Megan
Hannah Lauren Bethany Jasmine Molly Aisha Fatima Zainab Maryam Ayesha Khadija Amina Priya
Anjali Kiran Georgia Abigail Eleanor Zoe Jade
"""

FEMALE_CLASSIC = """
Rebecca Amy Katie Emma Laura Sarah Rachel Gemma Kelly Claire Nicola Lisa Joanne
Michelle Helen Karen Julie Tracey Amanda Deborah Jacqueline Susan Elizabeth Catherine Margaret
Patricia Linda Christine Janet Carol Barbara Jean Sandra Pauline Angela Gillian Wendy Lorraine
Dawn Diane Yvonne Denise Brenda Maureen Irene Doris Dorothy Joan Joyce Mary Betty Shirley
Sheila Kathleen Eileen Marjorie Edna Hilda Gladys Vera Ethel Winifred Iris Mavis Audrey Sylvia
Valerie Beryl Rita Doreen Elsie Annie Lilian Phyllis Marion June Ann Anne Jane Alison Louise
Victoria Stephanie Natalie Kirsty Danielle Leanne Stacey Samantha Sunita Agnieszka
Katarzyna Anna Magdalena Jennifer Frances Rose Kate Jenny Ellen
"""

SURNAMES = """
Smith Jones Williams Taylor Brown Davies Evans Wilson Thomas Johnson Roberts Robinson Thompson
Wright Walker White Edwards Hughes Green Hall Lewis Harris Clarke Patel Jackson Wood Turner
Martin Cooper Hill Ward Morris Moore Clark Lee King Baker Harrison Morgan Allen James Scott
Phillips Watson Davis Parker Price Bennett Young Griffiths Mitchell Kelly Cook Carter Richardson
Bailey Collins Bell Shaw Murphy Miller Cox Richards Khan Marshall Anderson Simpson Ellis Adams
Singh Begum Wilkinson Foster Chapman Powell Webb Rogers Gray Mason Ali Hunt Hussain Campbell
Matthews Owen Palmer Holmes Mills Barnes Knight Lloyd Butler Russell Barker Fisher Stevens
Jenkins Murray Dixon Harvey Graham Pearson Ahmed Fletcher Walsh Kaur Gibson Howard Andrews
Stewart Elliott Reynolds Saunders Payne Fox Ford Pearce Day Brooks West Lawrence Cole Atkinson
Bradley Spencer Gill Dawson Ball Burton O'Brien Watts Rose Booth Perry Ryan Grant Wells Armstrong
Francis Rees Hayes Hart Hudson Newman Barrett Webster Hunter Gregory Carr Lowe Page Marsh Riley
Dunn Woods Parsons Berry Stone Reid Holland Hawkins Harding Porter Robertson Newton Oliver Reed
Kennedy Williamson Bird Gardner Shah Dean Lane Cooke Bates Henderson Parry Burgess Bishop Walton
Burns Nicholson Shepherd Ross Cross Long Freeman Warren Nicholls Hamilton Byrne Sutton McDonald
Yates Hodgson Robson Curtis Hopkins O'Connor Harper Coleman Watkins Moss McCarthy Chambers
O'Neill Griffin Sharp Hardy Wheeler Potter Osborne Johnston Gordon Doyle Wallace George Jordan
Hutchinson Rowe Burke May Pritchard Gilbert Willis Higgins Read Miles Stevenson Stephenson
Hammond Arnold Buckley Walters Hewitt Barber Nelson Slater Austin Sullivan Whitehead Mann Frost
Lambert Stephens Blake Akhtar Lynch Goodwin Barton Woodward Thomson Cunningham Quinn Barnett
Baxter Bibi Clayton Nash Greenwood Jennings Holt Kemp Poole Gallagher Bond Stokes Tucker Davidson
Fowler Heath Norman Middleton Lawson Banks French Stanley Jarvis Gibbs Ferguson Hayward Carroll
Douglas Dickinson Todd Barlow Peters Lucas Knowles Hartley Miah Simmons Morton Alexander Field
Iqbal Mahmood Rahman Hanson Kowalski Nowak Sykes Haigh Firth Crowther Illingworth Greaves
"""

# (formal name, informal variants) as they appear across services for the same person
NICKNAMES: dict[str, tuple[str, ...]] = {
    "William": ("Bill", "Billy", "Will"), "Robert": ("Bob", "Rob", "Bobby"),
    "Richard": ("Dick", "Rich"), "Margaret": ("Maggie", "Peggy", "Meg"),
    "Elizabeth": ("Liz", "Beth", "Betty"), "Catherine": ("Kate", "Cathy"),
    "Katherine": ("Kate", "Kathy"), "Thomas": ("Tom", "Tommy"), "James": ("Jim", "Jimmy"),
    "Joseph": ("Joe",), "Michael": ("Mike", "Mick"), "Christopher": ("Chris",),
    "Anthony": ("Tony",), "Edward": ("Ted", "Eddie"), "Frederick": ("Fred", "Freddie"),
    "Kenneth": ("Ken",), "Ronald": ("Ron", "Ronnie"), "Leonard": ("Len",),
    "Stephen": ("Steve",), "Steven": ("Steve",), "Andrew": ("Andy",), "Daniel": ("Dan",),
    "Matthew": ("Matt",), "Samuel": ("Sam",), "Benjamin": ("Ben",), "Alexander": ("Alex",),
    "Nicholas": ("Nick",), "Timothy": ("Tim",), "Patricia": ("Pat", "Trish"),
    "Susan": ("Sue",), "Deborah": ("Debbie", "Deb"), "Jacqueline": ("Jackie",),
    "Christine": ("Chris",), "Victoria": ("Vicky",), "Rebecca": ("Becky",),
    "Jennifer": ("Jenny",), "Dorothy": ("Dot",), "Kathleen": ("Kath",), "Pauline": ("Paula",),
    "Valerie": ("Val",), "Gillian": ("Gill",), "Barbara": ("Babs",), "Alexandra": ("Alex",),
    "Samantha": ("Sam",), "Abigail": ("Abbie",), "Eleanor": ("Ellie",), "Peter": ("Pete",),
    "David": ("Dave",), "Raymond": ("Ray",), "Terence": ("Terry",), "Derek": ("Del",),
    "Gordon": ("Gordy",), "Norman": ("Norm",), "Harold": ("Harry",), "Albert": ("Bert",),
    "Bernard": ("Bernie",), "Gregory": ("Greg",), "Philip": ("Phil",), "Trevor": ("Trev",),
    "Malcolm": ("Mal",), "Geoffrey": ("Geoff",), "Douglas": ("Doug",), "Leslie": ("Les",),
    "Sidney": ("Sid",), "Stanley": ("Stan",), "Walter": ("Wally",), "Donald": ("Don",),
    "Mohammed": ("Mohammad", "Mohamed"), "Muhammad": ("Mohammed", "Mohamed"),
    "Jonathan": ("Jon", "Jonny"), "Joshua": ("Josh",), "Zachary": ("Zac",),
    "Theodore": ("Theo", "Ted"), "Sophia": ("Sophie",), "Isabella": ("Bella", "Izzy"),
    "Amelia": ("Millie",), "Charlotte": ("Lottie", "Charlie"), "Florence": ("Flo",),
    "Matilda": ("Tilly",), "Winifred": ("Winnie",), "Marjorie": ("Marj",),
    "Josephine": ("Jo",), "Joanne": ("Jo",), "Nicola": ("Nicky",), "Frances": ("Fran",),
}


def _split(text: str) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for word in text.split():
        seen.setdefault(word, None)
    return tuple(seen)


MALE_NAMES = _split(MALE)            # popular for people born since ~1990
MALE_OLDER = _split(MALE_CLASSIC)    # popular for people born before
FEMALE_NAMES = _split(FEMALE)
FEMALE_OLDER = _split(FEMALE_CLASSIC)
SURNAME_LIST = _split(SURNAMES)
